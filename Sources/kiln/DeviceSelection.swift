import KilnBackends
import KilnCore
import KilnCUDA

/// Work that runs on whichever backend the user picked.
protocol BackendJob {
    func execute<B: Backend>(on backend: B) throws
}

/// Runs `job` on the backend named by `--device`.
func runOnDevice(_ device: String, _ job: some BackendJob) throws {
    switch device {
    case "cpu":
        try job.execute(on: CPUBackend())
    case "cuda":
        try job.execute(on: CUDABackend())
    default:
        throw KilnError.invalidArgument("unknown device '\(device)' (use cpu or cuda)")
    }
}
