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
        try reportingErrors {
            _ = try arguments.generationOptions()
            try runOnDevice(arguments.device, self)
        }
    }

    func execute<B: Backend>(on backend: B) throws {
        guard runs >= 0 else { throw KilnError.invalidArgument("--runs must not be negative") }
        if let json { try FileIO.checkWritable(json) }
        let loadStart = MonotonicClock.now()
        let prepared = try arguments.prepare(on: backend)
        let pipeline = prepared.pipeline
        let loadSeconds = MonotonicClock.now() - loadStart
        fputs("kiln: \(prepared.description)\n", stderr)

        var setupTimes: [Double] = []
        var stepTimes: [Double] = []
        var decodeTimes: [Double] = []
        var pngTimes: [Double] = []
        var firstImage = 0.0
        for run in 0...runs {
            var last = MonotonicClock.now()
            var deviceError: Error?
            let final = try pipeline.denoise(latents: prepared.noise, prompt: prepared.prompt, options: prepared.options) { step, _ in
                do { try backend.synchronize() } catch { deviceError = deviceError ?? error }
                let now = MonotonicClock.now()
                if run > 0 || runs == 0 {
                    if step == 0 { setupTimes.append(now - last) } else { stepTimes.append(now - last) }
                }
                last = now
            }
            if let deviceError { throw deviceError }
            let decodeStart = MonotonicClock.now()
            let images = pipeline.decode(final)
            let pngStart = MonotonicClock.now()
            for image in images.batchItems() { _ = PNG.encode(image: image) }
            let end = MonotonicClock.now()
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
            ("loop_setup_median_ms", .number(BenchCommand.rounded(BenchCommand.median(setupTimes) * 1000))),
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
