#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A read-only memory map of a whole file. Unmapped when released.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let bytes: UnsafeRawBufferPointer

    /// Maps `path`; throws `KilnError.unreadable` naming the file and the OS reason.
    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw KilnError.unreadable(path: path, reason: FileIO.lastError()) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw KilnError.unreadable(path: path, reason: FileIO.lastError()) }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            throw KilnError.unreadable(path: path, reason: "not a regular file")
        }
        let size = Int(info.st_size)
        if size == 0 {
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            return
        }
        guard let base = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), base != MAP_FAILED else {
            throw KilnError.unreadable(path: path, reason: FileIO.lastError())
        }
        bytes = UnsafeRawBufferPointer(start: base, count: size)
    }

    deinit {
        if let base = bytes.baseAddress { munmap(UnsafeMutableRawPointer(mutating: base), bytes.count) }
    }
}

/// Whole-file reads and writes, and path queries, over the C library (no Foundation).
public enum FileIO {
    static func lastError() -> String { String(cString: strerror(errno)) }

    /// The bytes of a file (read in chunks, so files whose size the kernel reports as 0, like /proc's, work too).
    public static func read(_ path: String) throws -> [UInt8] {
        guard !isDirectory(path) else { throw KilnError.unreadable(path: path, reason: "is a directory") }
        guard let file = fopen(path, "rb") else { throw KilnError.unreadable(path: path, reason: lastError()) }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, file) }
            bytes += chunk[0..<count]
            if count < chunk.count {
                guard ferror(file) == 0 else { throw KilnError.unreadable(path: path, reason: "read failed") }
                return bytes
            }
        }
    }

    /// The UTF-8 text of a file; invalid UTF-8 is an error naming the file.
    public static func readText(_ path: String) throws -> String {
        let bytes = try read(path)
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw KilnError.corruptFile(path: path, reason: "not valid UTF-8 text")
        }
        return text
    }

    /// Parses a JSON file; syntax errors name the file.
    public static func readJSON(_ path: String) throws -> JSON {
        do {
            return try JSON.parse(try read(path))
        } catch let error as JSONError {
            throw KilnError.corruptFile(path: path, reason: error.description)
        }
    }

    /// Writes bytes to `path` through a temporary file renamed into place, so a failed write never leaves half a file
    /// (the temporary name carries the process id, so concurrent writers never share one).
    public static func write(_ bytes: [UInt8], to path: String) throws {
        let temporary = path + ".partial-\(getpid())"
        guard let file = fopen(temporary, "wb") else { throw KilnError.unwritable(path: path, reason: lastError()) }
        let written = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
        let closed = fclose(file)
        guard written == bytes.count, closed == 0 else {
            unlink(temporary)
            throw KilnError.unwritable(path: path, reason: "write failed: \(lastError())")
        }
        guard rename(temporary, path) == 0 else {
            unlink(temporary)
            throw KilnError.unwritable(path: path, reason: lastError())
        }
    }

    /// Throws `KilnError.unwritable` unless a file can be created at `path` (its folder exists and is writable).
    public static func checkWritable(_ path: String) throws {
        let folder = directory(of: path)
        guard isDirectory(folder) else { throw KilnError.unwritable(path: path, reason: "no such folder \(folder)") }
        guard access(folder, W_OK) == 0 else { throw KilnError.unwritable(path: path, reason: lastError()) }
    }

    /// True when `path` exists and is a directory.
    public static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }

    /// True when `path` exists (following links).
    public static func exists(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0
    }

    /// Names of the entries of a directory, sorted, without "." and "..".
    public static func list(_ directory: String) throws -> [String] {
        guard let handle = opendir(directory) else { throw KilnError.unreadable(path: directory, reason: lastError()) }
        defer { closedir(handle) }
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// `directory/name`.
    public static func join(_ directory: String, _ name: String) -> String {
        directory.hasSuffix("/") ? directory + name : directory + "/" + name
    }

    /// The folder part of a path ("." when there is none).
    public static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    /// Value of an environment variable.
    public static func environment(_ name: String) -> String? {
        guard let value = getenv(name) else { return nil }
        return String(cString: value)
    }
}
