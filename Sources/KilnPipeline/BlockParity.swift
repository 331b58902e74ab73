import KilnBackends
import KilnCore
import KilnModels

/// Block-by-block parity against a reference run: every block gets the reference's own input for that block, so each
/// output's error is that block's alone (random FLUX weights make end-to-end errors grow chaotically).
///
/// The reference file holds the step's inputs (`hidden_states`, `encoder_hidden_states`, `pooled_projections`,
/// `timestep`, optional `guidance`, metadata `latent_height`/`latent_width`) and each block's recorded inputs
/// (`double.{i}.img_in`, `double.{i}.txt_in`, `single.{i}.img_in`, `single.{i}.txt_in`), as
/// scripts/make_fixtures.py and scripts/device/parity.py write them.
public enum BlockParity {
    /// Kiln's outputs under the reference's names: `temb`, `double.{i}.img_out`, `double.{i}.txt_out`,
    /// `single.{i}.img_out`, `single.{i}.txt_out`, and `output` (the whole step from the step's inputs).
    public static func run<B: Backend>(_ model: FluxTransformer<B>, reference: Checkpoint, _ backend: B) throws -> [String: HostTensor] {
        func metadata(_ key: String) throws -> Int {
            guard let value = reference.metadata[key].flatMap({ Int($0) }) else {
                throw KilnError.corruptFile(path: reference.path, reason: "metadata '\(key)' is missing")
            }
            return value
        }
        let rows = try metadata("latent_height") / 2
        let columns = try metadata("latent_width") / 2
        let timestep = try reference.tensor("timestep").data
        let guidance = reference.contains("guidance") ? try reference.tensor("guidance").data : nil
        let text = try reference.tensor("encoder_hidden_states")
        let textTokens = text.shape[1]
        let input = { (name: String) throws -> B.Tensor in backend.tensor(try reference.tensor(name)) }

        var outputs: [String: HostTensor] = [:]
        let vec = model.conditioning(timestep: timestep, guidance: guidance, pooled: try input("pooled_projections"), backend)
        outputs["temb"] = backend.host(vec)
        let modulations = model.modulations(vec, backend)
        let rope = model.positionEmbedding(textTokens: textTokens, rows: rows, columns: columns, backend)
        for (i, block) in model.doubleBlocks.enumerated() {
            let out = block(image: try input("double.\(i).img_in"), text: try input("double.\(i).txt_in"),
                            modulation: modulations.double[i], rope: rope, backend)
            outputs["double.\(i).img_out"] = backend.host(out.image)
            outputs["double.\(i).txt_out"] = backend.host(out.text)
        }
        for (i, block) in model.singleBlocks.enumerated() {
            let joint = backend.concat([try input("single.\(i).txt_in"), try input("single.\(i).img_in")], axis: 1)
            let out = block(joint, modulation: modulations.single[i], rope: rope?.joint, backend)
            let total = backend.shape(out)[1]
            outputs["single.\(i).txt_out"] = backend.host(backend.slice(out, axis: 1, 0..<textTokens))
            outputs["single.\(i).img_out"] = backend.host(backend.slice(out, axis: 1, textTokens..<total))
        }
        outputs["output"] = backend.host(model.step(latents: try input("hidden_states"), text: model.embedText(backend.tensor(text), backend),
                                                    modulations: modulations, rope: rope, backend))
        return outputs
    }
}
