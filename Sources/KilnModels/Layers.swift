import KilnBackends
import KilnCore

/// Supplies weights by the model's canonical tensor names.
public protocol WeightSource {
    /// Where the weights come from, for messages.
    var origin: String { get }
    /// The tensor with canonical name `name`, as fp32, which must have `shape`.
    /// Throws `KilnError.missingTensor` if absent and `KilnError.wrongShape` if its shape differs.
    func tensor(_ name: String, shape: [Int]) throws -> HostTensor
    /// Weight `name` on `backend` (by default: `tensor` handed to `backend.weight`).
    func load<B: Backend>(_ name: String, shape: [Int], role: WeightRole, backend: B) throws -> B.Tensor
    /// Weights `names` stacked along their first dimension as one tensor on `backend` (layers fused into one GEMM);
    /// each must have its entry of `shapes`.
    func load<B: Backend>(joining names: [String], shapes: [[Int]], role: WeightRole, backend: B) throws -> B.Tensor
}

extension WeightSource {
    /// Hands weight `name` to `backend` for use as `role`.
    public func load<B: Backend>(_ name: String, shape: [Int], role: WeightRole, backend: B) throws -> B.Tensor {
        backend.weight(try tensor(name, shape: shape), role: role)
    }

    public func load<B: Backend>(joining names: [String], shapes: [[Int]], role: WeightRole, backend: B) throws -> B.Tensor {
        let parts = try zip(names, shapes).map { try tensor($0, shape: $1) }
        return backend.weight(HostTensor(shape: [parts.reduce(0) { $0 + $1.shape[0] }] + shapes[0].dropFirst(), data: parts.flatMap(\.data)),
                              role: role)
    }

    /// Checks a loaded tensor's shape.
    public func checked(_ value: HostTensor, _ name: String, _ shape: [Int]) throws -> HostTensor {
        guard value.shape == shape else { throw KilnError.wrongShape(name: name, expected: shape, found: value.shape) }
        return value
    }
}

/// A fully connected layer `y = x · Wᵀ + b`.
public struct Linear<B: Backend> {
    public let weight: B.Tensor
    public let bias: B.Tensor?

    public func callAsFunction(_ x: B.Tensor, _ backend: B, activation: Activation = .none) -> B.Tensor {
        backend.linear(x, weight: weight, bias: bias, activation: activation)
    }

    /// `residual + gate · self(x)`, fused where the backend can.
    public func callAsFunction(_ x: B.Tensor, _ backend: B, gate: B.Tensor, residual: B.Tensor) -> B.Tensor {
        backend.linear(x, weight: weight, bias: bias, gate: gate, residual: residual)
    }
}

/// A 2-D convolution with NHWC activations.
public struct Conv2d<B: Backend> {
    public let weight: B.Tensor
    public let bias: B.Tensor?
    public let stride: Int
    public let padding: Padding

    public func callAsFunction(_ x: B.Tensor, _ backend: B) -> B.Tensor {
        backend.conv2d(x, weight: weight, bias: bias, stride: stride, padding: padding)
    }

    /// `residual + self(x)`, fused where the backend can.
    public func callAsFunction(_ x: B.Tensor, _ backend: B, residual: B.Tensor) -> B.Tensor {
        backend.conv2d(x, weight: weight, bias: bias, stride: stride, padding: padding, residual: residual)
    }
}

/// Nearest 2x upsampling followed by a 3x3 convolution (padding 1), computed as one op (`Backend.upsampledConv2d`).
public struct UpsamplingConv2d<B: Backend> {
    public let weight: B.Tensor
    public let bias: B.Tensor?

    public func callAsFunction(_ x: B.Tensor, _ backend: B) -> B.Tensor {
        backend.upsampledConv2d(x, weight: weight, bias: bias)
    }
}

/// Affine parameters of a layer or group norm.
public struct NormWeights<B: Backend> {
    public let weight: B.Tensor
    public let bias: B.Tensor
}

/// Reads weights below a name prefix, checks their shapes and hands them to the backend.
public struct WeightLoader<B: Backend> {
    public let backend: B
    public let source: any WeightSource
    public let prefix: String
    /// Whether linear weights go to the backend as `.quantizableLinear` (else `.linear`).
    public let quantizableLinears: Bool

    public init(backend: B, source: any WeightSource, prefix: String = "", quantizableLinears: Bool = false) {
        self.backend = backend
        self.source = source
        self.prefix = prefix
        self.quantizableLinears = quantizableLinears
    }

    /// A loader for the names below `name.`.
    public func scoped(_ name: String) -> WeightLoader {
        WeightLoader(backend: backend, source: source, prefix: prefix + name + ".", quantizableLinears: quantizableLinears)
    }

    /// The same loader, handing linear weights over as quantizable.
    public func quantizingLinears() -> WeightLoader {
        WeightLoader(backend: backend, source: source, prefix: prefix, quantizableLinears: true)
    }

    /// The host tensor `name` below the prefix, checked to have `shape`.
    public func host(_ name: String, shape: [Int]) throws -> HostTensor {
        try source.tensor(prefix + name, shape: shape)
    }

    /// A vector parameter (bias, norm scale) of `count` elements.
    public func vector(_ name: String, count: Int) throws -> B.Tensor {
        try source.load(prefix + name, shape: [count], role: .vector, backend: backend)
    }

    /// A linear layer `name.weight` `[out, in]` and, if `bias`, `name.bias` `[out]`.
    public func linear(_ name: String, in inputs: Int, out outputs: Int, bias: Bool = true) throws -> Linear<B> {
        let scope = scoped(name)
        return Linear(weight: try source.load(scope.prefix + "weight", shape: [outputs, inputs],
                                                 role: quantizableLinears ? .quantizableLinear : .linear, backend: backend),
                      bias: bias ? try scope.vector("bias", count: outputs) : nil)
    }

    /// The linear layers `names` (each `[out, in]`, no bias) as one layer whose outputs are theirs side by side.
    public func linear(joining names: [String], in inputs: Int, out outputs: Int) throws -> Linear<B> {
        Linear(weight: try source.load(joining: names.map { prefix + $0 + ".weight" }, shapes: names.map { _ in [outputs, inputs] },
                                       role: quantizableLinears ? .quantizableLinear : .linear, backend: backend), bias: nil)
    }

    /// A convolution `name.weight` stored OIHW in files, with bias, handed to the backend as `[O, kh, kw, I]`.
    public func conv(_ name: String, in inputs: Int, out outputs: Int, kernel: Int, stride: Int = 1,
                     padding: Padding) throws -> Conv2d<B> {
        let scope = scoped(name)
        let oihw = try scope.host("weight", shape: [outputs, inputs, kernel, kernel])
        return Conv2d(weight: backend.weight(oihw.permuted([0, 2, 3, 1]), role: .convolution),
                      bias: try scope.vector("bias", count: outputs), stride: stride, padding: padding)
    }

    /// A 3x3 convolution of `channels` that runs on nearest-2x-upsampled input.
    public func upsamplingConv(_ name: String, channels: Int) throws -> UpsamplingConv2d<B> {
        let scope = scoped(name)
        let oihw = try scope.host("weight", shape: [channels, channels, 3, 3])
        return UpsamplingConv2d(weight: backend.weight(oihw.permuted([0, 2, 3, 1]), role: .upsamplingConvolution),
                                bias: try scope.vector("bias", count: channels))
    }

    /// Affine weights of a norm over `channels`.
    public func norm(_ name: String, channels: Int) throws -> NormWeights<B> {
        let scope = scoped(name)
        return NormWeights(weight: try scope.vector("weight", count: channels), bias: try scope.vector("bias", count: channels))
    }
}
