import ArgumentParser
import KilnCUDA

struct SelftestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "selftest",
        abstract: "Check every CUDA op against the CPU reference on random inputs, then time FLUX's GEMMs and attention.")

    @Flag(help: "Run the GPU conformance suite (required: the CPU-only tests run with `swift test`).")
    var gpu = false

    @Flag(help: "Skip the micro-benchmarks.")
    var noBench = false

    @Flag(help: "Fewer FLUX-size GEMM checks.")
    var quick = false

    @Flag(help: "Instead of the suite: whether the autotuned FP8 GEMMs stay the fastest under sustained load.")
    var sustainedGemms = false

    @Option(help: "Write the results as JSON to this file.")
    var json: String?

    @Option(help: "Write the conformance table as markdown to this file.")
    var markdown: String?

    func run() throws {
        guard gpu else { throw ValidationError("kiln selftest needs --gpu (CPU tests run with `swift test`)") }
        if sustainedGemms {
            try GPUSelftest().sustainedGemmRanking()
            return
        }
        let code = GPUSelftest.run(bench: !noBench, quick: quick, jsonPath: json, markdownPath: markdown)
        if code != 0 { throw ExitCode(code) }
    }
}
