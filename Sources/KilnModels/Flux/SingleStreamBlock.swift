import KilnBackends

/// A FLUX single-stream block over the joint sequence: one fused projection to Q, K, V and the MLP input,
/// attention and GELU side by side, one output projection of both.
public struct SingleStreamBlock<B: Backend> {
    let modulationLayer: Modulation<B>
    let linear1: Linear<B>
    let linear2: Linear<B>
    let queryNorm: B.Tensor
    let keyNorm: B.Tensor
    let hidden: Int
    let heads: Int

    /// Loads `single_blocks.N` (canonical BFL names).
    public init(_ loader: WeightLoader<B>, config: FluxConfig) throws {
        let h = config.hidden
        hidden = h
        heads = config.heads
        modulationLayer = try Modulation(loader.scoped("modulation"), hidden: h, count: 1)
        linear1 = try loader.linear("linear1", in: h, out: 3 * h + config.mlpHidden)
        linear2 = try loader.linear("linear2", in: h + config.mlpHidden, out: h)
        queryNorm = try loader.vector("norm.query_norm.scale", count: config.headDim)
        keyNorm = try loader.vector("norm.key_norm.scale", count: config.headDim)
    }

    /// The block's shift, scale and gate for conditioning vectors `vec` `[R, hidden]`.
    public func modulation(_ vec: B.Tensor, _ backend: B) -> ModulationVectors<B.Tensor> {
        modulationLayer(vec, backend)[0]
    }

    /// Runs the block on the joint sequence `[B, T + N, hidden]` with this step's modulation.
    public func callAsFunction(_ x: B.Tensor, modulation mod: ModulationVectors<B.Tensor>, rope: RotaryTable<B.Tensor>?,
                               _ backend: B) -> B.Tensor {
        let normed = backend.layerNormModulate(x, shift: mod.shift, scale: mod.scale, eps: 1e-6)
        let projected = linear1(normed, backend)
        let width = backend.shape(projected)[2]
        let q = backend.slice(projected, axis: 2, 0..<hidden)
        let k = backend.slice(projected, axis: 2, hidden..<(2 * hidden))
        let v = backend.slice(projected, axis: 2, (2 * hidden)..<(3 * hidden))
        let mlp = backend.activation(backend.slice(projected, axis: 2, (3 * hidden)..<width), .geluTanh)
        let qk = backend.qkNormRoPE(q: q, k: k, qWeight: queryNorm, kWeight: keyNorm, eps: 1e-6, heads: heads, rope: rope)
        let attended = backend.attention(q: qk.q, k: qk.k, v: v, heads: heads, scale: nil, keyMask: nil)
        let output = linear2(backend.concat([attended, mlp], axis: 2), backend)
        return backend.gatedResidual(x, gate: mod.gate, output)
    }
}
