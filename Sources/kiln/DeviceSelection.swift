import KilnBackends
import KilnCore
import KilnCUDA

/// Work that runs on whichever backend the user picked.
protocol BackendJob {
    func execute<B: Backend>(on backend: B) throws
}

/// Runs `job` on the backend named by `--device`, with the transformer's linear layers in `precision` (bf16 or fp8).
func runOnDevice(_ device: String, precision: String = "bf16", _ job: some BackendJob) throws {
    let linears: GemmPrecision
    switch precision {
    case "bf16": linears = .bf16
    case "fp8": linears = .fp8
    default: throw KilnError.invalidArgument("unknown precision '\(precision)' (use bf16 or fp8)")
    }
    switch device {
    case "cpu":
        guard linears == .bf16 else { throw KilnError.invalidArgument("--precision fp8 needs --device cuda (the CPU reference computes in fp32)") }
        try job.execute(on: CPUBackend())
    case "cuda":
        try job.execute(on: CUDABackend(linearPrecision: linears))
    default:
        throw KilnError.invalidArgument("unknown device '\(device)' (use cpu or cuda)")
    }
}
