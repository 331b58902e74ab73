import ArgumentParser
import KilnBackends
import KilnCore
import KilnCUDA
import KilnPipeline
#if canImport(Glibc)
import Glibc
#endif

struct BenchCommand: ParsableCommand, BackendJob {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Time each stage of a generation and print the figures as JSON.",
        discussion: """
            Times loading, the text encoders, each run's denoising loop, the VAE decode and the PNG encoding, over --runs runs
            after the first (cold) one. The first run of a shape is eager (steps timed one by one, the backend synchronized
            after each); on backends with graphs the second captures the loop as one graph and later runs replay it. Reports
            the step time (from replays where there are any), the transformer's TFLOP/s, the time from process start to the
            first image, and peak host and device memory.
            """)

    @OptionGroup var arguments: GenerationArguments

    @Option(help: "Timed runs after the first (cold) one.")
    var runs: Int = 3

    @Option(help: "Also write the JSON to this file.")
    var json: String?

    func run() throws {
        try reportingErrors {
            _ = try arguments.generationOptions()
            try runOnDevice(arguments.device, precision: arguments.precision, self)
        }
    }

    func execute<B: Backend>(on backend: B) throws {
        guard runs >= 0 else { throw KilnError.invalidArgument("--runs must not be negative") }
        if let json { try FileIO.checkWritable(json) }
        let loadStart = MonotonicClock.now()
        let prepared = try arguments.prepare(on: backend, timeWarmEncoding: true)
        let pipeline = prepared.pipeline
        let loadSeconds = MonotonicClock.now() - loadStart
        fputs("kiln: \(prepared.description)\n", stderr)

        var runReports: [JSON] = []
        var eagerSteps: [Double] = []
        var loopTimes: [(mode: GraphRoute, seconds: Double)] = []
        var decodeTimes: [(mode: GraphRoute, seconds: Double, deviceSeconds: Double?)] = []
        var pngTimes: [Double] = []
        var runTimes: [(loop: GraphRoute, decode: GraphRoute, seconds: Double)] = []
        var firstImage = 0.0
        var profile: [OpProfile.Entry] = [], laterProfile: [OpProfile.Entry] = []
        _ = try (backend as? CUDABackend)?.profile?.report()  // drops the loading work (random weights, quantization)
        for run in 0...runs {
            let start = MonotonicClock.now()
            var marks: [Int: Double] = [:]
            var deviceError: Error?
            let final = try pipeline.denoise(latents: prepared.noise, prompt: prepared.prompt, options: prepared.options) { step, _ in
                do { try backend.synchronize() } catch { deviceError = deviceError ?? error }
                marks[step] = MonotonicClock.now()
            }
            if let deviceError { throw deviceError }
            let steps = marks.keys.max() ?? 0
            let loopStart = marks[0] ?? start
            let loop = (marks[steps] ?? loopStart) - loopStart
            if pipeline.lastLoop == .eager, run > 0 || runs == 0 {
                eagerSteps += (1...max(1, steps)).compactMap { step in marks[step].flatMap { end in marks[step - 1].map { end - $0 } } }
            }
            let decodeStart = MonotonicClock.now()
            let decoded = pipeline.decodeToPNGRows(final)
            let pngStart = MonotonicClock.now()
            for rows in decoded.images { _ = PNG.encode(filteredRows: rows, width: decoded.width, height: decoded.height) }
            let end = MonotonicClock.now()
            if run == 0 {
                firstImage = BenchCommand.secondsSinceProcessStart()
                if let entries = try (backend as? CUDABackend)?.profile?.report() { profile = entries }
            }
            if run > 0 || runs == 0 {
                loopTimes.append((pipeline.lastLoop, loop))
                decodeTimes.append((pipeline.lastDecode, pngStart - decodeStart, pipeline.lastDecodeDeviceMilliseconds.map { $0 / 1000 }))
                runTimes.append((pipeline.lastLoop, pipeline.lastDecode, end - start))
                pngTimes.append(end - pngStart)
            }
            runReports.append(.object([
                ("loop", .string(pipeline.lastLoop.rawValue)),
                ("decode", .string(pipeline.lastDecode.rawValue)),
                ("setup_ms", .number(BenchCommand.rounded((loopStart - start) * 1000))),
                ("loop_ms", .number(BenchCommand.rounded(loop * 1000))),
                ("vae_decode_ms", .number(BenchCommand.rounded((pngStart - decodeStart) * 1000))),
                ("vae_decode_device_ms", pipeline.lastDecodeDeviceMilliseconds.map { .number(BenchCommand.rounded($0)) } ?? .null),
                ("png_ms", .number(BenchCommand.rounded((end - pngStart) * 1000))),
            ]))
        }
        if let entries = try (backend as? CUDABackend)?.profile?.report() { laterProfile = entries }
        let steps = prepared.options.steps ?? pipeline.defaultSteps
        // The step figure comes from graph replays where there are any, else from eager steps, else from the loop that
        // was captured (timed from its first replay: the capture itself comes before the loop's start mark).
        let replays = loopTimes.filter { $0.mode == .replayed }.map { $0.seconds / Double(steps) }
        let captured = loopTimes.filter { $0.mode == .captured }.map { $0.seconds / Double(steps) }
        let (stepSource, stepSamples) = !replays.isEmpty ? ("graph replays (loop time / steps)", replays)
            : !eagerSteps.isEmpty ? ("eager steps", eagerSteps) : ("the captured run's replay (loop time / steps)", captured)
        let stepMedian = BenchCommand.median(stepSamples)
        // Likewise the decode (replays: what a serving process sees once warm), and the image: runs that replayed both
        // graphs, else runs that replayed the loop, else runs without captures. The decode's wall time includes the
        // image's conversion to PNG rows and its download; its device time (CUDA events: latents in, image on the
        // device out, as diffusers' `vae.decode` is timed) is the decoder alone.
        let decodesReplayed = decodeTimes.contains { $0.mode == .replayed }
        let decodeRuns = decodeTimes.filter { decodesReplayed ? $0.mode == .replayed : $0.mode != .captured }
        let decodeSource = decodesReplayed ? "graph replays" : "runs that did not capture"
        let decodeWall = decodeRuns.map(\.seconds)
        let decodeDevice = decodeRuns.compactMap(\.deviceSeconds)
        let fullyReplayed = runTimes.filter { $0.loop == .replayed && $0.decode == .replayed }.map(\.seconds)
        let loopReplayed = runTimes.filter { $0.loop == .replayed }.map(\.seconds)
        let imageTimes = !fullyReplayed.isEmpty ? fullyReplayed : !loopReplayed.isEmpty ? loopReplayed
            : runTimes.filter { $0.loop != .captured && $0.decode != .captured }.map(\.seconds)
        let config = pipeline.transformer.config
        let (h, w) = prepared.options.latentSize
        let flops = config.stepFLOPs(imageTokens: (h / 2) * (w / 2), textTokens: prepared.prompt.sequence.shape[1])
            * Double(prepared.options.batch)
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        let report = JSON.object([
            ("device", .string(backend.name)),
            ("model", .string(prepared.description)),
            ("variant", .string(config.variant)),
            ("precision", .string((backend as? CUDABackend).map { "\($0.linearPrecision.rawValue) linears, \($0.attentionPrecision.rawValue) attention" } ?? "fp32")),
            // Streams the captured loop may use (`KILN_STREAMS`), and how many regions it really forked onto two.
            ("streams", (backend as? CUDABackend).map { .number(Double($0.streams)) } ?? .null),
            ("forked_regions", (backend as? CUDABackend).map { .number(Double($0.forkedRegions)) } ?? .null),
            ("width", .number(Double(prepared.options.width))),
            ("height", .number(Double(prepared.options.height))),
            ("batch", .number(Double(prepared.options.batch))),
            ("steps", .number(Double(steps))),
            ("load_s", .number(BenchCommand.rounded(loadSeconds - prepared.textEncodingSeconds))),
            ("text_encoders_s", .number(BenchCommand.rounded(prepared.textEncodingSeconds))),
            ("weights_from_files_gb", .number(BenchCommand.rounded(Double((backend as? CUDABackend)?.loadedWeightBytes ?? 0) / 1e9))),
            ("runs", .array(runReports)),
            ("step_source", .string(stepSource)),
            ("eager_step_ms", .array(eagerSteps.map { .number(BenchCommand.rounded($0 * 1000)) })),
            ("step_median_ms", .number(BenchCommand.rounded(stepMedian * 1000))),
            ("step_tflops", .number(BenchCommand.rounded(flops / stepMedian / 1e12))),
            ("vae_decode_source", .string(decodeSource)),
            ("vae_decode_median_ms", decodeWall.isEmpty ? .null : .number(BenchCommand.rounded(BenchCommand.median(decodeWall) * 1000))),
            ("vae_decode_device_median_ms", decodeDevice.isEmpty || decodeDevice.count < decodeRuns.count ? .null
                : .number(BenchCommand.rounded(BenchCommand.median(decodeDevice) * 1000))),
            ("png_median_ms", .number(BenchCommand.rounded(BenchCommand.median(pngTimes) * 1000))),
            ("text_encoders_warm_ms", prepared.warmTextEncodingSeconds.map { .number(BenchCommand.rounded($0 * 1000)) } ?? .null),
            // All three uncached encodings: CLIP's graph captured in the first, T5's in the second, both replayed in the last.
            ("text_encoders_warm_runs_ms", .array(prepared.warmTextEncodingRuns.map { .number(BenchCommand.rounded($0 * 1000)) })),
            // Per image, the median of the runs chosen above (`imageTimes`): setup, loop, decode, PNG (embeddings
            // given) ...
            ("image_median_ms", imageTimes.isEmpty ? .null : .number(BenchCommand.rounded(BenchCommand.median(imageTimes) * 1000))),
            // ... and with the text encoders, where they ran (loaded, warm) before it.
            ("pipeline_median_ms", prepared.warmTextEncodingSeconds.flatMap { text in
                imageTimes.isEmpty ? nil : .number(BenchCommand.rounded((text + BenchCommand.median(imageTimes)) * 1000)) } ?? .null),
            ("process_start_to_first_image_s", .number(BenchCommand.rounded(firstImage))),
            ("peak_host_memory_mb", .number(Double(usage.ru_maxrss / 1024))),
            ("peak_device_memory_gb", backend.memoryReservedBytes.map { .number(BenchCommand.rounded(Double($0) / 1e9)) } ?? .null),
            ("profile_first_run", .array(profile.map { .object([("op", .string($0.name)), ("calls", .number(Double($0.calls))),
                                                                  ("ms", .number(BenchCommand.rounded($0.milliseconds)))]) })),
            ("profile_later_runs", .array(laterProfile.map { .object([("op", .string($0.name)), ("calls", .number(Double($0.calls))),
                                                                        ("ms", .number(BenchCommand.rounded($0.milliseconds)))]) })),
        ])
        for (title, entries) in [("first (eager) run: loop and VAE decode", profile), ("later runs: VAE decodes (the loops replay as graphs)", laterProfile)]
        where !entries.isEmpty {
            fputs("kiln: device time per op, \(title)\n", stderr)
            for e in entries.prefix(24) { fputs("  \(e.name + String(repeating: " ", count: max(0, 56 - e.name.count))) \(e.calls) calls  \(BenchCommand.rounded(e.milliseconds)) ms\n", stderr) }
        }
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
