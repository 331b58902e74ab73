import KilnBackends
import KilnCore

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
        throw KilnError.unsupported("--device cuda is not available yet: the CUDA backend arrives with the H100 issues; use --device cpu")
    default:
        throw KilnError.invalidArgument("unknown device '\(device)' (use cpu or cuda)")
    }
}
