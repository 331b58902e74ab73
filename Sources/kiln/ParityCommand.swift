import ArgumentParser
import KilnBackends
import KilnCore
import KilnModels
import KilnPipeline

struct ParityCommand: ParsableCommand, BackendJob {
    static let configuration = CommandConfiguration(
        commandName: "parity",
        abstract: "Run every transformer block on a reference run's recorded inputs (and the VAE decoder on its input); write the outputs.",
        discussion: """
            The reference file holds a step's inputs and every block's recorded inputs, named as scripts/make_fixtures.py and
            scripts/device/flux_parity.py write them (double.{i}.img_in, ..., metadata latent_height/latent_width). The
            outputs file gets Kiln's outputs under the reference's output names, in fp32, for comparison by the caller.
            """)

    @Option(help: "A diffusers FLUX folder or a BFL transformer file.")
    var model: String

    @Option(help: "The reference run (safetensors).")
    var reference: String

    @Option(help: "Optional VAE reference with `decode_in` [B, 16, h, w] (decoder input); adds `decode_out`.")
    var vaeReference: String?

    @Option(help: "Where to write Kiln's outputs (safetensors, fp32).")
    var out: String

    @Option(help: "cpu or cuda.")
    var device: String = "cpu"

    @Option(help: "The transformer's linear layers on cuda: bf16 or fp8.")
    var precision: String = "bf16"

    func run() throws {
        try reportingErrors { try runOnDevice(device, precision: precision, self) }
    }

    func execute<B: Backend>(on backend: B) throws {
        try FileIO.checkWritable(out)
        let files = try ModelFiles(path: model)
        let reference = try Checkpoint(path: reference)
        let vaeInput = try vaeReference.map { try Checkpoint(path: $0).tensor("decode_in") }
        let transformer = try FluxTransformer(config: files.transformerConfig, loader: WeightLoader(backend: backend, source: files.transformer))
        var outputs = try BlockParity.run(transformer, reference: reference, backend)
        if let vaeInput {
            let decoder = try VAEDecoder(config: files.vaeConfig, loader: WeightLoader(backend: backend, source: files.vae, prefix: "decoder."))
            outputs["decode_out"] = backend.host(decoder(backend.tensor(vaeInput.permuted([0, 2, 3, 1])), backend)).permuted([0, 3, 1, 2])
        }
        try SafeTensorsWriter.write(outputs.sorted { $0.key < $1.key }.map { .init($0.key, $0.value) }, to: out)
        print(out)
    }
}
