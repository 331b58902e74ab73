import ArgumentParser
import KilnBackends
import KilnCore
import KilnPipeline
#if canImport(Glibc)
import Glibc
#endif

struct BenchCommand: ParsableCommand, BackendJob {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Time each stage of a generation and print the figures as JSON.",
        discussion: """
            Times loading, every denoising step (the backend is synchronized after each), the VAE decode and the PNG
            encoding, over --runs runs after the first (cold) one; reports medians, the transformer's TFLOP/s, the time from
            process start to the first image, and peak host memory.
            """)

    @OptionGroup var arguments: GenerationArguments

    @Option(help: "Timed runs after the first (cold) one.")
    var runs: Int = 2

    @Option(help: "Also write the JSON to this file.")
    var json: String?

    func run() throws {
        try reportingErrors { try runOnDevice(arguments.device, self) }
    }

    func execute<B: Backend>(on backend: B) throws {
        guard runs >= 0 else { throw KilnError.invalidArgument("--runs must not be negative") }
        let loadStart = MonotonicClock.now()
        let prepared = try arguments.prepare(on: backend)
        let pipeline = prepared.pipeline
        let loadSeconds = MonotonicClock.now() - loadStart
        fputs("kiln: \(prepared.description)\n", stderr)

        var stepTimes: [Double] = []
        var decodeTimes: [Double] = []
        var pngTimes: [Double] = []
        var firstImage = 0.0
        for run in 0...runs {
            var last = MonotonicClock.now()
            let final = try pipeline.denoise(latents: prepared.noise, prompt: prepared.prompt, options: prepared.options) { _, _ in
                try? backend.synchronize()
                let now = MonotonicClock.now()
                if run > 0 || runs == 0 { stepTimes.append(now - last) }
                last = now
            }
            let decodeStart = MonotonicClock.now()
            let images = pipeline.decode(final)
            let pngStart = MonotonicClock.now()
            let pngs = images.batchItems().map { PNG.encode(image: $0) }
            let end = MonotonicClock.now()
            precondition(pngs.allSatisfy { !$0.isEmpty })
            if run == 0 { firstImage = BenchCommand.secondsSinceProcessStart() }
            if run > 0 || runs == 0 {
                decodeTimes.append(pngStart - decodeStart)
                pngTimes.append(end - pngStart)
            }
        }
        let config = pipeline.transformer.config
        let (h, w) = prepared.options.latentSize
        let flops = config.stepFLOPs(imageTokens: (h / 2) * (w / 2), textTokens: prepared.prompt.sequence.shape[1])
            * Double(prepared.options.batch)
        let stepMedian = BenchCommand.median(stepTimes)
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        let report = JSON.object([
            ("device", .string(backend.name)),
            ("model", .string(prepared.description)),
            ("variant", .string(config.variant)),
            ("width", .number(Double(prepared.options.width))),
            ("height", .number(Double(prepared.options.height))),
            ("batch", .number(Double(prepared.options.batch))),
            ("steps", .number(Double(stepTimes.count / max(1, runs)))),
            ("load_s", .number(BenchCommand.rounded(loadSeconds - prepared.textEncodingSeconds))),
            ("text_encoders_s", .number(BenchCommand.rounded(prepared.textEncodingSeconds))),
            ("step_ms", .array(stepTimes.map { .number(BenchCommand.rounded($0 * 1000)) })),
            ("step_median_ms", .number(BenchCommand.rounded(stepMedian * 1000))),
            ("step_tflops", .number(BenchCommand.rounded(flops / stepMedian / 1e12))),
            ("vae_decode_median_ms", .number(BenchCommand.rounded(BenchCommand.median(decodeTimes) * 1000))),
            ("png_median_ms", .number(BenchCommand.rounded(BenchCommand.median(pngTimes) * 1000))),
            ("process_start_to_first_image_s", .number(BenchCommand.rounded(firstImage))),
            ("peak_host_memory_mb", .number(Double(usage.ru_maxrss / 1024))),
        ])
        print(report.serialized)
        if let json { try FileIO.write(Array((report.serialized + "\n").utf8), to: json) }
    }

    static func median(_ values: [Double]) -> Double {
        guard !values.isEmpty else { return .nan }
        let sorted = values.sorted()
        return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }

    static func rounded(_ value: Double) -> Double { (value * 1000).rounded() / 1000 }

    /// Seconds since this process started, from /proc (start time in clock ticks since boot).
    static func secondsSinceProcessStart() -> Double {
        guard let stat = try? FileIO.readText("/proc/self/stat"), let close = stat.lastIndex(of: ")") else { return .nan }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 19, let ticks = Double(fields[19]) else { return .nan }
        var boot = timespec()
        clock_gettime(CLOCK_BOOTTIME, &boot)
        return Double(boot.tv_sec) + Double(boot.tv_nsec) * 1e-9 - ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
    }
}
