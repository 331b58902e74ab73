import ArgumentParser
import KilnCUDA

struct CompileCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compile",
        abstract: "Compile every CUDA kernel with NVRTC ahead of time, filling the kernel cache; report per-kernel times.",
        discussion: "With --arch and --check only NVRTC is needed (no GPU): every kernel source must compile for that target.")

    @Option(help: "Target architecture (e.g. sm_90a); default: the GPU present.")
    var arch: String?

    @Flag(help: "Compile without reading or writing the cache (a compile check, e.g. in CI).")
    var check = false

    @Flag(help: "Recompile even when the cache holds a kernel.")
    var force = false

    @Flag(help: "Print the assembler's resource report (registers, shared memory, spills) per kernel.")
    var verbose = false

    func run() throws {
        let code = CUDATools.compile(arch: arch, check: check, force: force, verbose: verbose)
        if code != 0 { throw ExitCode(code) }
    }
}
