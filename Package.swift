// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "Kiln",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "kiln", targets: ["kiln"]),
        .library(name: "KilnPipeline", targets: ["KilnPipeline"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // Core: tensors on the host, number formats, safetensors, JSON, PNG. No dependencies.
        .target(name: "KilnCore"),
        // Backends: the op interface and the CPU reference implementation.
        .target(name: "KilnBackends", dependencies: ["KilnCore"]),
        // Models: FLUX transformer and VAE, written once against the op interface; weight loading.
        .target(name: "KilnModels", dependencies: ["KilnCore", "KilnBackends"]),
        // Text: CLIP BPE and T5 unigram tokenizers, text encoders.
        .target(name: "KilnText", dependencies: ["KilnCore", "KilnBackends", "KilnModels"]),
        // Pipeline: scheduler, noise, text-to-image loop, progress.
        .target(name: "KilnPipeline", dependencies: ["KilnCore", "KilnBackends", "KilnModels", "KilnText"]),
        // CUDA: run-time binding of the driver, NVRTC and cuBLASLt (C, dlopen), and the CUDA backend over it.
        .target(name: "CKilnCUDA", linkerSettings: [.linkedLibrary("dl")]),
        .target(name: "KilnCUDA", dependencies: ["CKilnCUDA", "KilnCore", "KilnBackends"], exclude: ["Kernels"]),
        .executableTarget(
            name: "kiln",
            dependencies: [
                "KilnCore", "KilnBackends", "KilnModels", "KilnText", "KilnPipeline", "KilnCUDA",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .testTarget(
            name: "KilnTests",
            dependencies: ["KilnCore", "KilnBackends", "KilnModels", "KilnPipeline"]),
        .testTarget(name: "KilnCUDATests", dependencies: ["KilnCUDA", "KilnCore", "KilnBackends"]),
        .testTarget(name: "KilnTextTests", dependencies: ["KilnCore", "KilnText"]),
    ],
    swiftLanguageModes: [.v5]
)
