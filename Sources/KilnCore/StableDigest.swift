/// A 128-bit FNV-1a digest (two independent 64-bit lanes), hex encoded; stable across runs and machines.
/// Used to name cache entries.
public func stableDigest(_ parts: [String]) -> String {
    var a: UInt64 = 0xcbf2_9ce4_8422_2325
    var b: UInt64 = 0x8422_2325_cbf2_9ce4
    for part in parts {
        for byte in part.utf8 {
            a = (a ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
            b = (b ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
            b = b &+ (b >> 29)
        }
        // A separator no text byte can fake.
        a = (a ^ 0x1ff) &* 0x0000_0100_0000_01b3
        b = (b ^ 0x2ff) &* 0x0000_0100_0000_01b3
    }
    func hex(_ v: UInt64) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }
    return hex(a) + hex(b)
}
