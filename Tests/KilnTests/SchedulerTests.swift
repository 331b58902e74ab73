import KilnCore
import KilnPipeline
import XCTest

/// Sigmas and timesteps against diffusers' FlowMatchEulerDiscreteScheduler as FluxPipeline drives it.
final class SchedulerTests: XCTestCase {
    func testMatchesDiffusersSchedules() throws {
        let reference = try FileIO.readJSON(Fixtures.path("reference/scheduler.json"))
        let cases = try XCTUnwrap(reference["cases"]?.array)
        XCTAssertGreaterThanOrEqual(cases.count, 40)
        for entry in cases {
            let name = try XCTUnwrap(entry["config"]?.string)
            let config = try SchedulerConfig(json: try XCTUnwrap(reference["configs"]?[name]), path: "scheduler.json")
            let steps = try XCTUnwrap(entry["steps"]?.int)
            let tokens = try XCTUnwrap(entry["image_seq_len"]?.int)
            let scheduler = FlowMatchEulerScheduler(config: config, steps: steps, imageTokens: tokens)
            let expectedSigmas = try XCTUnwrap(entry["sigmas"]?.array).map { Float($0.number!) }
            let expectedTimesteps = try XCTUnwrap(entry["timesteps"]?.array).map { Float($0.number!) }
            let what = "\(name) steps \(steps) tokens \(tokens)"
            XCTAssertEqual(scheduler.sigmas.count, expectedSigmas.count, what)
            XCTAssertEqual(scheduler.timesteps.count, expectedTimesteps.count, what)
            for (a, b) in zip(scheduler.sigmas, expectedSigmas) { XCTAssertEqual(a, b, accuracy: 1e-6 * max(1, abs(b)), what) }
            for (a, b) in zip(scheduler.timesteps, expectedTimesteps) { XCTAssertEqual(a, b, accuracy: 1e-4 * max(1, abs(b)), what) }
            if config.useDynamicShifting {
                XCTAssertEqual(scheduler.mu!, entry["mu"]!.number!, accuracy: 1e-12, what)
            }
        }
    }

    func testDynamicShiftMovesTheSchedule() {
        let shifted = FlowMatchEulerScheduler(config: .dev, steps: 4, imageTokens: 4096)
        let plain = FlowMatchEulerScheduler(config: .dev, steps: 4, imageTokens: 4096, dynamicShift: false)
        XCTAssertEqual(plain.sigmas, [1, 0.75, 0.5, 0.25, 0])
        XCTAssertGreaterThan(shifted.sigmas[2], 0.7)
    }
}
