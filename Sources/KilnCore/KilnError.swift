/// Errors a user can cause and act on: a bad file, a missing tensor, a bad option.
/// Each case renders as one line that names what is wrong and where.
public enum KilnError: Error, CustomStringConvertible, Equatable {
    /// A file could not be opened or read.
    case unreadable(path: String, reason: String)
    /// A file or folder could not be created or written.
    case unwritable(path: String, reason: String)
    /// A model or tensor file whose content is malformed.
    case corruptFile(path: String, reason: String)
    /// A tensor the model needs is absent.
    case missingTensor(name: String, file: String)
    /// A tensor has a shape other than the model needs.
    case wrongShape(name: String, expected: [Int], found: [Int])
    /// A user-supplied value outside what Kiln accepts.
    case invalidArgument(String)
    /// A feature that is not available in this build or on this machine.
    case unsupported(String)

    public var description: String {
        switch self {
        case let .unreadable(path, reason): return "cannot read \(path): \(reason)"
        case let .unwritable(path, reason): return "cannot write \(path): \(reason)"
        case let .corruptFile(path, reason): return "\(path): \(reason)"
        case let .missingTensor(name, file): return "tensor '\(name)' is missing from \(file)"
        case let .wrongShape(name, expected, found):
            return "tensor '\(name)' has shape \(found), expected \(expected)"
        case let .invalidArgument(message): return message
        case let .unsupported(message): return message
        }
    }
}
