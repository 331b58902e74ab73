import ArgumentParser
import KilnCore
import KilnModels

struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Show what a FLUX model folder or file holds: layout, variant, parameters, dtypes, missing or unexpected tensors.")

    @Argument(help: "A diffusers FLUX folder, or a BFL single-file transformer (.safetensors).")
    var path: String

    @Option(help: "The BFL autoencoder file, when it is not ae.safetensors beside the transformer.")
    var vae: String?

    func run() throws {
        try reportingErrors {
            let files = try ModelFiles(path: path, vaePath: vae)
            let config = files.transformerConfig
            let vaeConfig = files.vaeConfig
            let report = ModelInspection(files)
            print("path: \(path)")
            print("layout: \(files.layout.rawValue)")
            print("variant: \(files.variant)")
            print("transformer: hidden \(config.hidden) (\(config.heads) heads × \(config.headDim)), \(config.doubleBlocks) double + \(config.singleBlocks) single blocks, joint dim \(config.jointDim), pooled dim \(config.pooledDim), RoPE axes \(config.axesDim)")
            print("vae: channels \(vaeConfig.blockChannels), \(vaeConfig.layersPerBlock) layers per block, \(vaeConfig.latentChannels) latent channels, \(vaeConfig.groups) groups, scaling \(vaeConfig.scalingFactor), shift \(vaeConfig.shiftFactor)")
            for part in report.parts {
                let dtypes = part.dtypes.sorted { $0.key < $1.key }.map { "\($0.key) × \($0.value)" }.joined(separator: ", ")
                print("\(part.name) parameters: \(part.parameters) (\(InspectCommand.millions(part.parameters))), dtypes: \(dtypes)")
            }
            print("missing or misshapen tensors: \(report.missing.isEmpty ? "none" : String(report.missing.count))")
            for finding in report.missing { print("  \(finding)") }
            print("unexpected tensors: \(report.unexpected.isEmpty ? "none" : String(report.unexpected.count))")
            for name in report.unexpected { print("  \(name)") }
        }
    }

    /// "11.90 B" or "84 M".
    static func millions(_ count: Int) -> String {
        let hundredthsOfBillions = Int((Double(count) / 1e7).rounded())
        if hundredthsOfBillions >= 100 {
            let fraction = hundredthsOfBillions % 100
            return "\(hundredthsOfBillions / 100).\(fraction < 10 ? "0" : "")\(fraction) B"
        }
        return "\(Int((Double(count) / 1e6).rounded())) M"
    }
}
