import KilnCore

/// Activation applied in a linear layer's epilogue (and available on its own).
public enum Activation: Sendable {
    case none
    case silu
    /// GELU with the tanh approximation, as FLUX's MLPs use.
    case geluTanh
}

/// Precomputed rotary position embedding: `cos` and `sin` of shape `[L, D]` for L positions and head size D,
/// each pair of lanes (2i, 2i+1) sharing one angle.
public struct RotaryTable<Tensor> {
    public var cos: Tensor
    public var sin: Tensor
    public init(cos: Tensor, sin: Tensor) {
        self.cos = cos
        self.sin = sin
    }
}

/// The op interface all models are written against.
///
/// Tensors are row-major; sequences are `[B, L, C]`, images are NHWC `[B, H, W, C]`. Linear weights are
/// `[out, in]` as in checkpoints; convolution weights are `[out, kh, kw, in]` (checkpoints' OIHW, permuted at load).
/// Ops return new tensors; a backend may place them in a planned arena.
///
/// The fused ops (`layerNormModulate`, `gatedResidual`, `qkNormRoPE`, `gatedGELU`, `linear` with an activation, `groupNorm` with SiLU)
/// exist so a fast backend can implement each as one kernel; the extension below composes them from simple ops, which is
/// what the CPU reference uses.
public protocol Backend: AnyObject {
    associatedtype Tensor

    /// A short name for messages ("cpu", "cuda").
    var name: String { get }

    // MARK: data movement
    /// Copies a host tensor into the backend.
    func tensor(_ host: HostTensor) -> Tensor
    /// Loads a weight. Backends may convert it (e.g. to BF16 or FP8); `role` says how it will be used.
    func weight(_ host: HostTensor, role: WeightRole) -> Tensor
    /// A weight made of stored tensors joined along their first dimension (they share the others), e.g. a fused QKV
    /// matrix from three files' tensors. The default decodes on the host; a device backend can move the stored bytes.
    func weight(rows parts: [StoredTensor], role: WeightRole) -> Tensor
    /// A weight of seeded normal values `mean + std · n_i`, where n_i is the i-th normal of `NoiseGenerator(seed:)`;
    /// backends may generate it in place (random full-size models without a host round trip).
    func randomNormal(shape: [Int], seed: UInt64, mean: Float, std: Float, role: WeightRole) -> Tensor
    /// Copies a tensor back to the host as fp32.
    func host(_ tensor: Tensor) -> HostTensor
    /// The shape of a tensor.
    func shape(_ tensor: Tensor) -> [Int]
    /// Waits until all queued work is done (a no-op for synchronous backends); for timing stages.
    func synchronize() throws
    /// Runs `body`, timing on the device the work it queues: `milliseconds` waits for that work and returns its device
    /// time, or nil where the backend measures none (the default: a synchronous backend's time is the caller's wall
    /// clock).
    func deviceTimed<T>(_ body: () -> T) -> (result: T, milliseconds: () -> Double?)
    /// The most device memory the backend has held at once (weights, activations, caches), or nil for host memory.
    var memoryReservedBytes: Int? { get }
    /// Returns memory cached for reuse to the system (after a large model is released).
    func releaseCachedMemory() throws

    // MARK: layout
    /// The same elements with another shape of equal count.
    func reshape(_ x: Tensor, _ shape: [Int]) -> Tensor
    /// Concatenation along `axis`.
    func concat(_ parts: [Tensor], axis: Int) -> Tensor
    /// The sub-range `range` of dimension `axis`.
    func slice(_ x: Tensor, axis: Int, _ range: Range<Int>) -> Tensor

    // MARK: elementwise
    /// `a + b`, same shapes.
    func add(_ a: Tensor, _ b: Tensor) -> Tensor
    /// `x + alpha * y`, same shapes.
    func addScaled(_ x: Tensor, _ y: Tensor, alpha: Float) -> Tensor
    /// `x * a + b` with scalars.
    func affine(_ x: Tensor, scale a: Float, shift b: Float) -> Tensor
    /// Applies an activation elementwise.
    func activation(_ x: Tensor, _ kind: Activation) -> Tensor
    /// `x * (1 + scale) + shift` where `x` is `[B, L, C]` and `scale`, `shift` are `[B, C]`.
    func modulate(_ x: Tensor, shift: Tensor, scale: Tensor) -> Tensor
    /// `x * gate` where `x` is `[B, L, C]` and `gate` is `[B, C]`.
    func scaleChannels(_ x: Tensor, by gate: Tensor) -> Tensor

    // MARK: linear algebra
    /// `x · wᵀ + bias` over the last dimension of `x` (`[..., in]` → `[..., out]`), then `activation`.
    func linear(_ x: Tensor, weight: Tensor, bias: Tensor?, activation: Activation) -> Tensor
    /// Multi-head attention, non-causal, softmax scale `scale` (nil: 1/√D). `q`, `k`, `v` are `[B, L, H·D]`; the result too.
    /// `keyMask`, when given, is `[B, L]` with 1 for keys to attend to and 0 for keys to ignore.
    func attention(q: Tensor, k: Tensor, v: Tensor, heads: Int, scale: Float?, keyMask: Tensor?) -> Tensor
    /// `softmax(scale · q·kᵀ + bias[h]) · v` per head, `bias` `[H, Lq, Lk]` or `[1, Lq, Lk]` (shared by all heads);
    /// `-infinity` masks (CLIP's causal mask, T5's relative position bias).
    func attention(q: Tensor, k: Tensor, v: Tensor, heads: Int, scale: Float, bias: Tensor) -> Tensor

    // MARK: normalization
    /// Layer norm over the last dimension, optional affine weight and bias.
    func layerNorm(_ x: Tensor, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor
    /// RMS norm over the last dimension times `weight`.
    func rmsNorm(_ x: Tensor, weight: Tensor, eps: Float) -> Tensor
    /// Group norm over NHWC `[B, H, W, C]` with per-channel affine, optionally followed by SiLU.
    func groupNorm(_ x: Tensor, groups: Int, weight: Tensor, bias: Tensor, eps: Float, silu: Bool) -> Tensor

    // MARK: position
    /// Rotary embedding applied to `x` of shape `[B, L, H, D]` with a table of `[L, D]`.
    func rope(_ x: Tensor, _ table: RotaryTable<Tensor>) -> Tensor

    // MARK: images
    /// 2-D convolution, NHWC in and out, weight `[O, kh, kw, I]`, padding (top, left, bottom, right) with zeros.
    func conv2d(_ x: Tensor, weight: Tensor, bias: Tensor?, stride: Int, padding: Padding) -> Tensor
    /// Nearest-neighbour 2x upsampling of NHWC.
    func upsampleNearest2x(_ x: Tensor) -> Tensor
    /// `conv2d(upsampleNearest2x(x))` with a 3x3 `weight` loaded as `.upsamplingConvolution`, stride 1, padding 1 (the
    /// VAE decoder's upsamplers). A backend may work on the low-resolution input: each output pixel sees only 2x2
    /// input pixels, so the convolution needs about 4 / 9 of the products.
    func upsampledConv2d(_ x: Tensor, weight: Tensor, bias: Tensor?) -> Tensor
    /// Decoded images `[B, H, W, 3]` in [-1, 1] as PNG image data on the host: per image and row a filter byte (0),
    /// then the row's samples `PNG.byte(x / 2 + 0.5)`; also how many values were not finite (written as 0).
    func imageRows(_ x: Tensor) -> (rows: [UInt8], nonFinite: Int)

    // MARK: graphs
    /// Records the device work `body` enqueues as a graph, without running it, or returns nil where the backend has no
    /// graphs (the caller then runs `body` itself). Tensors `body` reads keep their storage while the graph lives; new
    /// values go into them with `overwrite`. `body` must not move data to or from the host.
    func capture(_ body: @escaping () throws -> Void) throws -> DeviceGraph?
    /// Writes host values into an existing tensor of the same shape, in place (the inputs of a captured graph).
    func overwrite(_ tensor: Tensor, with host: HostTensor) throws
    /// Changes whenever cached memory leaves the backend's reuse lists for good. A capture finds every block an eager run
    /// of the same work used only if this has not changed since that run.
    var memoryGeneration: Int { get }

    // MARK: concurrency
    /// Runs two independent pieces of device work, `first` then `second` on the host, and returns their results in that
    /// order. A backend may overlap them on the device (CUDA with `KILN_STREAMS=2` runs `second` on a second stream in a
    /// captured graph), so neither body may use a tensor the other makes; both may read tensors made before. The default
    /// runs them in turn.
    func concurrently<A, B>(_ first: () -> A, _ second: () -> B) -> (A, B)

    // MARK: fused (defaults below compose simple ops)
    /// `layerNorm(x) * (1 + scale) + shift` (no affine weights, as adaLN uses).
    /// `feedsQuantizableLinears`: the result goes only into `.quantizableLinear` layers, so the backend may hand it
    /// over in their input precision (FP8 with per-row scales on CUDA under `--precision fp8`).
    func layerNormModulate(_ x: Tensor, shift: Tensor, scale: Tensor, eps: Float, feedsQuantizableLinears: Bool) -> Tensor
    /// `layerNormModulate` of several inputs at once, in one launch where the backend can (FLUX's double blocks norm
    /// their image and text tokens together: the text alone is too little work to fill a GPU).
    func layerNormModulate(_ inputs: [ModulatedNormInput<Tensor>], eps: Float, feedsQuantizableLinears: Bool) -> [Tensor]
    /// `x + gate * y`, `gate` `[B, C]` broadcast over the sequence.
    func gatedResidual(_ x: Tensor, gate: Tensor, _ y: Tensor) -> Tensor
    /// `gelu_tanh(a) * b` for `x = [a | b]`, the halves of its last dimension (T5's gated feed-forward).
    func gatedGELU(_ x: Tensor) -> Tensor
    /// Per-head RMS norm of `q` and `k` (`[B, L, H·D]`, weights `[D]`), then rotary embedding; returns both as `[B, L, H·D]`.
    func qkNormRoPE(q: Tensor, k: Tensor, qWeight: Tensor, kWeight: Tensor, eps: Float, heads: Int,
                    rope table: RotaryTable<Tensor>?) -> (q: Tensor, k: Tensor)
    /// Attention's inputs from one or more streams' fused projections `[B, Lᵢ, 3·H·D]` (Q, K, V side by side): joint
    /// `[B, ΣLᵢ, H·D]` Q, K and V in stream order, Q and K per-head RMS-normed and rotated by their stream's table.
    /// FLUX's double blocks join text and image this way; single blocks pass one stream.
    func attentionInputs(_ streams: [QKVStream<Tensor>], eps: Float, heads: Int) -> (q: Tensor, k: Tensor, v: Tensor)
    /// `residual + gate · linear(x)` (`gate` `[B, out]`): an output projection with FLUX's gated residual in its epilogue.
    func linear(_ x: Tensor, weight: Tensor, bias: Tensor?, gate: Tensor, residual: Tensor) -> Tensor
    /// `residual + conv2d(x)`: a resnet's second convolution with its skip connection in the epilogue.
    func conv2d(_ x: Tensor, weight: Tensor, bias: Tensor?, stride: Int, padding: Padding, residual: Tensor) -> Tensor
}

/// One input of a batched `layerNormModulate`: tokens `x` `[B, L, C]` with their `shift` and `scale` `[B, C]`.
public struct ModulatedNormInput<Tensor> {
    public var x: Tensor
    public var shift: Tensor
    public var scale: Tensor

    public init(_ x: Tensor, shift: Tensor, scale: Tensor) {
        (self.x, self.shift, self.scale) = (x, shift, scale)
    }
}

/// One stream's fused Q, K, V projection with its QK-norm weights `[D]` and rotary table, for `attentionInputs`.
public struct QKVStream<Tensor> {
    public var qkv: Tensor
    public var queryNorm: Tensor
    public var keyNorm: Tensor
    public var rope: RotaryTable<Tensor>?

    public init(qkv: Tensor, queryNorm: Tensor, keyNorm: Tensor, rope: RotaryTable<Tensor>?) {
        (self.qkv, self.queryNorm, self.keyNorm, self.rope) = (qkv, queryNorm, keyNorm, rope)
    }
}

/// Device work recorded once and replayed with one launch (a CUDA graph).
public protocol DeviceGraph: AnyObject {
    /// Enqueues the recorded work again, on the same buffers.
    func replay() throws
}

/// How a weight will be used, so a backend can choose its storage.
public enum WeightRole: Sendable {
    /// A linear layer's `[out, in]` matrix.
    case linear
    /// A linear layer's `[out, in]` matrix that the backend may store quantized: FP8 e4m3 with one scale per output
    /// channel on CUDA under `--precision fp8` (the transformer's layers, and T5's with `--t5-precision fp8`; CLIP and the VAE stay BF16).
    case quantizableLinear
    /// A convolution kernel `[O, kh, kw, I]`.
    case convolution
    /// A 3x3 convolution kernel `[O, 3, 3, I]` for `upsampledConv2d`; backends may store it in another form.
    case upsamplingConvolution
    /// Anything else: biases, norm weights, embeddings.
    case vector
}

/// Zero padding of a convolution.
public struct Padding: Equatable, Sendable {
    public var top, left, bottom, right: Int
    public init(top: Int, left: Int, bottom: Int, right: Int) {
        (self.top, self.left, self.bottom, self.right) = (top, left, bottom, right)
    }
    /// The same padding on all four sides.
    public static func uniform(_ p: Int) -> Padding { Padding(top: p, left: p, bottom: p, right: p) }
}

extension Backend {
    public func synchronize() throws {}

    public func deviceTimed<T>(_ body: () -> T) -> (result: T, milliseconds: () -> Double?) { (body(), { nil }) }

    public func weight(rows parts: [StoredTensor], role: WeightRole) -> Tensor {
        weight(parts.decodedJoined(), role: role)
    }

    public var memoryReservedBytes: Int? { nil }

    public func releaseCachedMemory() throws {}

    public func capture(_ body: @escaping () throws -> Void) throws -> DeviceGraph? { nil }

    public var memoryGeneration: Int { 0 }

    public func concurrently<A, B>(_ first: () -> A, _ second: () -> B) -> (A, B) { (first(), second()) }

    public func overwrite(_ tensor: Tensor, with host: HostTensor) throws {
        throw KilnError.unsupported("the \(name) backend writes no tensor in place")
    }

    public func randomNormal(shape: [Int], seed: UInt64, mean: Float, std: Float, role: WeightRole) -> Tensor {
        var noise = NoiseGenerator(seed: seed)
        return weight(HostTensor(shape: shape, data: noise.normal(shape.reduce(1, *)).map { mean + std * $0 }), role: role)
    }

    public func layerNormModulate(_ x: Tensor, shift: Tensor, scale: Tensor, eps: Float, feedsQuantizableLinears: Bool) -> Tensor {
        modulate(layerNorm(x, weight: nil, bias: nil, eps: eps), shift: shift, scale: scale)
    }

    public func layerNormModulate(_ inputs: [ModulatedNormInput<Tensor>], eps: Float, feedsQuantizableLinears: Bool) -> [Tensor] {
        inputs.map { layerNormModulate($0.x, shift: $0.shift, scale: $0.scale, eps: eps, feedsQuantizableLinears: feedsQuantizableLinears) }
    }

    /// `layerNormModulate` with a result in the activation precision.
    public func layerNormModulate(_ x: Tensor, shift: Tensor, scale: Tensor, eps: Float) -> Tensor {
        layerNormModulate(x, shift: shift, scale: scale, eps: eps, feedsQuantizableLinears: false)
    }

    public func gatedResidual(_ x: Tensor, gate: Tensor, _ y: Tensor) -> Tensor {
        add(x, scaleChannels(y, by: gate))
    }

    public func gatedGELU(_ x: Tensor) -> Tensor {
        let s = shape(x)
        let (axis, half) = (s.count - 1, s.last! / 2)
        return multiply(activation(slice(x, axis: axis, 0..<half), .geluTanh), slice(x, axis: axis, half..<(2 * half)))
    }

    /// `a * b` elementwise for equal shapes, composed from `scaleChannels` over rows of one token.
    public func multiply(_ a: Tensor, _ b: Tensor) -> Tensor {
        let s = shape(a)
        let c = s.last!
        let rows = s.reduce(1, *) / c
        return reshape(scaleChannels(reshape(a, [rows, 1, c]), by: reshape(b, [rows, c])), s)
    }

    public func attentionInputs(_ streams: [QKVStream<Tensor>], eps: Float, heads: Int) -> (q: Tensor, k: Tensor, v: Tensor) {
        let parts = streams.map { s -> (q: Tensor, k: Tensor, v: Tensor) in
            let qkv = chunk(s.qkv, 3)
            let qk = qkNormRoPE(q: qkv[0], k: qkv[1], qWeight: s.queryNorm, kWeight: s.keyNorm, eps: eps, heads: heads, rope: s.rope)
            return (qk.q, qk.k, qkv[2])
        }
        if parts.count == 1 { return parts[0] }
        return (concat(parts.map(\.q), axis: 1), concat(parts.map(\.k), axis: 1), concat(parts.map(\.v), axis: 1))
    }

    public func linear(_ x: Tensor, weight: Tensor, bias: Tensor?, gate: Tensor, residual: Tensor) -> Tensor {
        gatedResidual(residual, gate: gate, linear(x, weight: weight, bias: bias))
    }

    public func upsampledConv2d(_ x: Tensor, weight: Tensor, bias: Tensor?) -> Tensor {
        conv2d(upsampleNearest2x(x), weight: weight, bias: bias, stride: 1, padding: .uniform(1))
    }

    public func conv2d(_ x: Tensor, weight: Tensor, bias: Tensor?, stride: Int, padding: Padding, residual: Tensor) -> Tensor {
        add(residual, conv2d(x, weight: weight, bias: bias, stride: stride, padding: padding))
    }

    public func qkNormRoPE(q: Tensor, k: Tensor, qWeight: Tensor, kWeight: Tensor, eps: Float, heads: Int,
                           rope table: RotaryTable<Tensor>?) -> (q: Tensor, k: Tensor) {
        func one(_ x: Tensor, _ weight: Tensor) -> Tensor {
            let s = shape(x)
            let perHead = reshape(x, [s[0], s[1], heads, s[2] / heads])
            var normed = rmsNorm(perHead, weight: weight, eps: eps)
            if let table { normed = rope(normed, table) }
            return reshape(normed, s)
        }
        return (one(q, qWeight), one(k, kWeight))
    }

    public func imageRows(_ x: Tensor) -> (rows: [UInt8], nonFinite: Int) {
        let image = host(x)
        let (rows, width, channels) = (image.shape[0] * image.shape[1], image.shape[2], image.shape[3])
        var nonFinite = 0
        let bytes = [UInt8](unsafeUninitializedCapacity: rows * (1 + width * channels)) { out, count in
            image.data.withUnsafeBufferPointer { values in
                for r in 0..<rows {
                    let start = r * (1 + width * channels)
                    out[start] = 0
                    for i in 0..<(width * channels) {
                        let v = values[r * width * channels + i]
                        if !v.isFinite { nonFinite += 1 }
                        out[start + 1 + i] = PNG.byte(v / 2 + 0.5)
                    }
                }
            }
            count = rows * (1 + width * channels)
        }
        return (bytes, nonFinite)
    }

    /// `linear` with no activation.
    public func linear(_ x: Tensor, weight: Tensor, bias: Tensor?) -> Tensor {
        linear(x, weight: weight, bias: bias, activation: .none)
    }

    /// Splits the last dimension into `count` equal chunks.
    public func chunk(_ x: Tensor, _ count: Int) -> [Tensor] {
        let s = shape(x)
        let axis = s.count - 1
        let size = s[axis] / count
        return (0..<count).map { slice(x, axis: axis, ($0 * size)..<(($0 + 1) * size)) }
    }
}
