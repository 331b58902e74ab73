import KilnBackends
import KilnCore
import KilnModels
import XCTest

/// The VAE decoder and encoder on the CPU against diffusers' AutoencoderKL (fp32), in both file layouts.
final class VAETests: XCTestCase {
    let backend = CPUBackend()

    func check(_ path: String) throws {
        let files = try ModelFiles(path: Fixtures.path(path))
        let ref = try Fixtures.reference("vae")
        let decoder = try VAEDecoder(config: files.vaeConfig, loader: WeightLoader(backend: backend, source: files.vae, prefix: "decoder."))
        let decoded = decoder(try ref.tensor("decode_in").permuted([0, 2, 3, 1]), backend).permuted([0, 3, 1, 2])
        assertClose(decoded, try ref.tensor("decode_out"), tolerance: 1e-4, "\(path) decode")

        let encoder = try VAEEncoder(config: files.vaeConfig, loader: WeightLoader(backend: backend, source: files.vae, prefix: "encoder."))
        let moments = encoder(try ref.tensor("encode_in").permuted([0, 2, 3, 1]), backend).permuted([0, 3, 1, 2])
        let latent = files.vaeConfig.latentChannels
        assertClose(backend.slice(moments, axis: 1, 0..<latent), try ref.tensor("encode_mean"), tolerance: 1e-4, "\(path) encode mean")
        let logvar = backend.slice(moments, axis: 1, latent..<(2 * latent))
        assertClose(HostTensor(shape: logvar.shape, data: logvar.data.map { min(max($0, -30), 20) }),
                    try ref.tensor("encode_logvar"), tolerance: 1e-4, "\(path) encode logvar")
    }

    func testDiffusersLayout() throws { try check("tiny-flux-dev") }
    func testBFLLayout() throws { try check("bfl/flux1-tiny-dev.safetensors") }

    func testBFLNamesMapOntoEveryAutoencoderTensor() throws {
        let files = try ModelFiles(path: Fixtures.path("bfl/flux1-tiny-dev.safetensors"))
        let report = ModelInspection(files)
        XCTAssertEqual(report.missing, [])
        XCTAssertEqual(report.unexpected, [])
    }
}
