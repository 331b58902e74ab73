import KilnCore

/// The files of a FLUX model found on disk, in either layout, with their configs read and validated.
///
/// - diffusers layout: a folder with `model_index.json`, `transformer/`, `vae/`, `scheduler/` (and, for prompts,
///   the text encoders and tokenizers).
/// - BFL layout: a single `flux1-*.safetensors` transformer file with `ae.safetensors` beside it (or given apart).
public struct ModelFiles {
    public enum Layout: String, Sendable {
        case diffusers
        case bflSingleFile = "bfl-single-file"
    }

    public let path: String
    public let layout: Layout
    public let transformerConfig: FluxConfig
    public let transformer: FluxCheckpointWeights
    public let vaeConfig: AutoencoderConfig
    public let vae: VAEWeights
    /// The scheduler's `scheduler_config.json`, or nil for BFL files (the variant's defaults then apply).
    public let schedulerConfig: JSON?

    /// "dev" or "schnell".
    public var variant: String { transformerConfig.variant }

    /// Opens a diffusers folder or a BFL transformer file. `vaePath` overrides where the BFL autoencoder is.
    public init(path: String, vaePath: String? = nil) throws {
        self.path = path
        if FileIO.isDirectory(path) {
            guard FileIO.exists(FileIO.join(path, "model_index.json")) || FileIO.isDirectory(FileIO.join(path, "transformer")) else {
                throw KilnError.unreadable(path: path, reason: "not a diffusers FLUX folder (no model_index.json or transformer/)")
            }
            layout = .diffusers
            let transformerFolder = FileIO.join(path, "transformer")
            let configPath = FileIO.join(transformerFolder, "config.json")
            transformerConfig = try FluxConfig(diffusersConfig: try FileIO.readJSON(configPath), path: configPath)
            let checkpoint = try Checkpoint(path: transformerFolder)
            guard FluxCheckpointWeights.detectLayout(checkpoint) == .diffusers else {
                throw KilnError.corruptFile(path: checkpoint.path, reason: "not a diffusers FLUX transformer (no x_embedder.weight)")
            }
            transformer = FluxCheckpointWeights(checkpoint: checkpoint, layout: .diffusers)
            let vaeFolder = vaePath ?? FileIO.join(path, "vae")
            let vaeConfigPath = FileIO.join(vaeFolder, "config.json")
            vaeConfig = try AutoencoderConfig(diffusersConfig: try FileIO.readJSON(vaeConfigPath), path: vaeConfigPath)
            vae = try ModelFiles.openVAE(vaeFolder, config: vaeConfig)
            schedulerConfig = try FileIO.readJSON(FileIO.join(FileIO.join(path, "scheduler"), "scheduler_config.json"))
            try ModelFiles.checkCompatible(transformerConfig, vaeConfig, vaePath: vaeFolder)
        } else {
            layout = .bflSingleFile
            let checkpoint = try Checkpoint(path: path)
            guard FluxCheckpointWeights.detectLayout(checkpoint) == .bfl else {
                throw KilnError.corruptFile(path: path, reason: "not a BFL FLUX transformer file (no img_in.weight)")
            }
            transformer = FluxCheckpointWeights(checkpoint: checkpoint, layout: .bfl)
            transformerConfig = try FluxConfig(bflShapes: { checkpoint.info($0)?.shape }, path: path)
            let aePath = vaePath ?? FileIO.join(FileIO.directory(of: path), "ae.safetensors")
            let aeCheckpoint = try Checkpoint(path: aePath)
            vaeConfig = try AutoencoderConfig(bflShapes: { aeCheckpoint.info($0)?.shape }, path: aePath)
            vae = try ModelFiles.openVAE(aePath, config: vaeConfig, checkpoint: aeCheckpoint)
            schedulerConfig = nil
            try ModelFiles.checkCompatible(transformerConfig, vaeConfig, vaePath: aePath)
        }
    }

    /// The transformer and the VAE must agree: the same latent channels and FLUX's 8x spatial factor.
    static func checkCompatible(_ transformer: FluxConfig, _ vae: AutoencoderConfig, vaePath: String) throws {
        guard vae.latentChannels == transformer.latentChannels else {
            throw KilnError.corruptFile(path: vaePath, reason: "the VAE has \(vae.latentChannels) latent channels, the transformer \(transformer.latentChannels)")
        }
        guard vae.downsampling == 8 else {
            throw KilnError.corruptFile(path: vaePath, reason: "the VAE scales by \(vae.downsampling), FLUX needs 8 (4 blocks)")
        }
    }

    static func openVAE(_ path: String, config: AutoencoderConfig, checkpoint: Checkpoint? = nil) throws -> VAEWeights {
        let checkpoint = try checkpoint ?? Checkpoint(path: path)
        guard let layout = VAEWeights.detectLayout(checkpoint) else {
            throw KilnError.corruptFile(path: checkpoint.path, reason: "not a FLUX autoencoder (no decoder weights found)")
        }
        return VAEWeights(checkpoint: checkpoint, layout: layout, blocks: config.blockChannels.count)
    }
}
