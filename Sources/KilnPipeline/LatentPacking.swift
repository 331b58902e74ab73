import KilnCore

/// FLUX's 2×2 patching of latents: `[B, C, H, W]` ↔ `[B, (H/2)(W/2), 4C]`, channel index `c·4 + dy·2 + dx`.
public enum LatentPacking {
    /// Packs unpacked latents `[B, C, H, W]` (H, W even) into tokens.
    public static func pack(_ latents: HostTensor) -> HostTensor {
        let (b, c, h, w) = (latents.shape[0], latents.shape[1], latents.shape[2], latents.shape[3])
        return latents.reshaped([b, c, h / 2, 2, w / 2, 2]).permuted([0, 2, 4, 1, 3, 5]).reshaped([b, (h / 2) * (w / 2), c * 4])
    }

    /// Unpacks tokens `[B, (H/2)(W/2), 4C]` back to `[B, C, H, W]`.
    public static func unpack(_ tokens: HostTensor, height h: Int, width w: Int) -> HostTensor {
        let (b, c) = (tokens.shape[0], tokens.shape[2] / 4)
        return tokens.reshaped([b, h / 2, w / 2, c, 2, 2]).permuted([0, 3, 1, 4, 2, 5]).reshaped([b, c, h, w])
    }
}
