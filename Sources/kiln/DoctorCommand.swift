import ArgumentParser
import KilnCUDA

struct DoctorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check the GPU and the NVIDIA libraries Kiln loads (paths, versions), and run one GEMM.")

    func run() throws {
        let code = CUDATools.doctor()
        if code != 0 { throw ExitCode(code) }
    }
}
