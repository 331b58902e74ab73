import ArgumentParser
import KilnCore
#if canImport(Glibc)
import Glibc
#endif

@main
struct Kiln: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kiln",
        abstract: "FLUX.1 text-to-image, natively.",
        subcommands: [GenerateCommand.self, InspectCommand.self, BenchCommand.self, TokenizeCommand.self, EncodeCommand.self,
                      ParityCommand.self, DoctorCommand.self, CompileCommand.self, SelftestCommand.self])
}

/// Runs a command body and turns any error into one line on stderr and exit code 1.
func reportingErrors(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let exit as ExitCode {
        throw exit
    } catch {
        fputs("kiln: error: \(error)\n", stderr)
        throw ExitCode(1)
    }
}
