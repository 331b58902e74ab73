import KilnCore
#if canImport(Glibc)
import Glibc
#endif

/// Settings of diffusers' `FlowMatchEulerDiscreteScheduler` that FLUX uses.
public struct SchedulerConfig: Equatable, Sendable {
    public var trainTimesteps = 1000
    public var shift = 3.0
    /// Shift the schedule by μ, linear in the number of image tokens (dev); schnell uses the plain schedule.
    public var useDynamicShifting = true
    public var baseImageSeqLen = 256
    public var maxImageSeqLen = 4096
    public var baseShift = 0.5
    public var maxShift = 1.15

    public init() {}

    /// FLUX.1-dev's scheduler.
    public static let dev = SchedulerConfig()
    /// FLUX.1-schnell's scheduler: no shift at all.
    public static var schnell: SchedulerConfig {
        var config = SchedulerConfig()
        config.shift = 1
        config.useDynamicShifting = false
        return config
    }

    /// Reads `scheduler_config.json`; absent keys take diffusers' class defaults (shift 1, no dynamic shifting), which
    /// differ from FLUX.1-dev's values in `SchedulerConfig.dev`.
    public init(json: JSON, path: String) throws {
        func number(_ key: String, _ fallback: Double) throws -> Double { try json.finiteNumber(key, default: fallback, in: path) }
        trainTimesteps = try json.positiveInt("num_train_timesteps", default: 1000, in: path)
        shift = try number("shift", 1)
        guard shift > 0 else { throw KilnError.corruptFile(path: path, reason: "shift must be positive, got \(shift)") }
        useDynamicShifting = json["use_dynamic_shifting"]?.bool ?? false
        baseImageSeqLen = try json.positiveInt("base_image_seq_len", default: 256, in: path)
        maxImageSeqLen = try json.positiveInt("max_image_seq_len", default: 4096, in: path)
        guard maxImageSeqLen > baseImageSeqLen else {
            throw KilnError.corruptFile(path: path, reason: "max_image_seq_len must exceed base_image_seq_len")
        }
        baseShift = try number("base_shift", 0.5)
        maxShift = try number("max_shift", 1.15)
        for unsupported in ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas"]
        where json[unsupported]?.bool == true {
            throw KilnError.unsupported("\(path): '\(unsupported)' is not supported (FLUX does not use it)")
        }
        if let kind = json["time_shift_type"]?.string, kind != "exponential" {
            throw KilnError.unsupported("\(path): time_shift_type '\(kind)' is not supported (FLUX uses exponential)")
        }
        if json["stochastic_sampling"]?.bool == true {
            throw KilnError.unsupported("\(path): stochastic_sampling is not supported (FLUX samples deterministically)")
        }
        if let terminal = json["shift_terminal"], terminal != .null {
            throw KilnError.unsupported("\(path): 'shift_terminal' is not supported (FLUX does not use it)")
        }
    }

    /// FLUX's resolution-dependent shift μ for `imageTokens` packed latent tokens.
    public func mu(imageTokens: Int) -> Double {
        let slope = (maxShift - baseShift) / Double(maxImageSeqLen - baseImageSeqLen)
        return Double(imageTokens) * slope + (baseShift - slope * Double(baseImageSeqLen))
    }
}

/// The flow-matching Euler schedule exactly as `FluxPipeline` sets it up: sigmas `linspace(1, 1/N, N)`,
/// shifted by `exp(μ)/(exp(μ) + (1/σ − 1))` (dev) or `s·σ/(1 + (s−1)·σ)`, a final 0 appended, timesteps σ·1000.
/// Computed once on the host, in fp32 as diffusers does, before the loop; nothing is read back during it.
public struct FlowMatchEulerScheduler: Sendable {
    /// σ for each step and a final 0 (`steps + 1` values).
    public let sigmas: [Float]
    /// σ · 1000 for each step.
    public let timesteps: [Float]
    /// The shift applied, or nil when the schedule is unshifted.
    public let mu: Double?

    /// The schedule for `steps` steps over `imageTokens` packed latent tokens. `dynamicShift: false` drops the
    /// dynamic shift (for mutation tests only).
    public init(config: SchedulerConfig, steps: Int, imageTokens: Int, dynamicShift: Bool = true) {
        precondition(steps > 0, "steps must be positive")
        let base: [Float] = (0..<steps).map { i in
            let end = 1.0 / Double(steps)
            return Float(steps == 1 ? 1.0 : 1.0 + (end - 1.0) * Double(i) / Double(steps - 1))
        }
        var shifted: [Float]
        if config.useDynamicShifting {
            let mu = config.mu(imageTokens: imageTokens)
            self.mu = mu
            let e = Float(exp(mu))
            shifted = dynamicShift ? base.map { e / (e + (1 / $0 - 1)) } : base
        } else {
            mu = nil
            let s = Float(config.shift)
            shifted = base.map { s * $0 / (1 + (s - 1) * $0) }
        }
        timesteps = shifted.map { $0 * Float(config.trainTimesteps) }
        sigmas = shifted + [0]
    }

    public var steps: Int { timesteps.count }

    /// The Euler step size σ[i+1] − σ[i] of step `i`: `x ← x + Δσ · v`.
    public func stepSize(_ i: Int) -> Float { sigmas[i + 1] - sigmas[i] }
}
