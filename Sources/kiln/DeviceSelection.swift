import KilnBackends
import KilnCore
import KilnCUDA

/// Work that runs on whichever backend the user picked.
protocol BackendJob {
    func execute<B: Backend>(on backend: B) throws
}

/// Runs `job` on the backend named by `--device`, with the transformer's linear layers (and joint attention) in
/// `precision`: bf16, fp8, or auto (FP8 on CUDA GPUs with FP8 tensor cores, sm_89 and later; BF16 elsewhere).
func runOnDevice(_ device: String, precision: String = "auto", _ job: some BackendJob) throws {
    guard ["auto", "bf16", "fp8"].contains(precision) else {
        throw KilnError.invalidArgument("unknown precision '\(precision)' (use auto, bf16 or fp8)")
    }
    switch device {
    case "cpu":
        guard precision != "fp8" else { throw KilnError.invalidArgument("--precision fp8 needs --device cuda (the CPU reference computes in fp32)") }
        try job.execute(on: CPUBackend())
    case "cuda":
        let gpu = try CUDADevice()
        let capability = gpu.computeCapability
        let fp8Cores = capability.major > 8 || (capability.major == 8 && capability.minor >= 9)
        if precision == "fp8" && !fp8Cores {
            throw KilnError.invalidArgument("--precision fp8 needs FP8 tensor cores (sm_89 or later); this GPU is \(gpu.arch)")
        }
        let linears: GemmPrecision = precision == "fp8" || (precision == "auto" && fp8Cores) ? .fp8 : .bf16
        try job.execute(on: CUDABackend(device: gpu, linearPrecision: linears))
    default:
        throw KilnError.invalidArgument("unknown device '\(device)' (use cpu or cuda)")
    }
}
