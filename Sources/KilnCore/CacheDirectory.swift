#if canImport(Glibc)
import Glibc
#endif

/// Where Kiln keeps its on-disk caches: `KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`.
public enum CacheDirectory {
    /// The cache root.
    public static func root() -> String {
        if let dir = FileIO.environment("KILN_CACHE_DIR"), !dir.isEmpty { return dir }
        if let xdg = FileIO.environment("XDG_CACHE_HOME"), !xdg.isEmpty { return FileIO.join(xdg, "kiln") }
        return FileIO.join(FileIO.environment("HOME") ?? "/tmp", ".cache/kiln")
    }

    /// `root()/name`, created with its parents.
    public static func folder(_ name: String) throws -> String {
        let path = FileIO.join(root(), name)
        try makeDirectories(path)
        return path
    }

    /// Creates `path` and its parents.
    public static func makeDirectories(_ path: String) throws {
        var current = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            current += "/" + component
            if !FileIO.isDirectory(current) && mkdir(current, 0o755) != 0 && errno != EEXIST {
                throw KilnError.unwritable(path: current, reason: String(cString: strerror(errno)))
            }
        }
    }
}
