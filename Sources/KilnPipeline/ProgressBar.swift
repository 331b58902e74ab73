import KilnCore
#if canImport(Glibc)
import Glibc
#endif

/// A one-line progress bar on standard error: redrawn in place on a terminal, one line per update otherwise.
public final class ProgressBar {
    let label: String
    let interactive: Bool
    var start = MonotonicClock.now()

    public init(label: String) {
        self.label = label
        interactive = isatty(2) != 0
    }

    /// Restarts the clock (e.g. after loading).
    public func reset() { start = MonotonicClock.now() }

    /// Shows `done` of `total`; 0 (re)starts the clock without drawing.
    public func update(_ done: Int, of total: Int) {
        if done == 0 { return reset() }
        let width = 30
        let filled = total == 0 ? width : done * width / total
        let elapsed = MonotonicClock.now() - start
        let rate = done > 0 ? elapsed / Double(done) : 0
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        let line = "\(label) [\(bar)] \(done)/\(total)  \(ProgressBar.format(rate)) s/step"
        fputs(interactive ? "\r" + line + (done == total ? "\n" : "") : line + "\n", stderr)
    }

    static func format(_ seconds: Double) -> String {
        let hundredths = Int((seconds * 100).rounded())
        let fraction = hundredths % 100
        return "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction)"
    }
}
