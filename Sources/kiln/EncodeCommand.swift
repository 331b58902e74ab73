import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
import KilnBackends
import KilnCore
import KilnText

/// `kiln encode`: the text encoders alone, writing the embeddings a `--prompt-embeds` run reads.
struct EncodeCommand: ParsableCommand, BackendJob {
    static let configuration = CommandConfiguration(
        commandName: "encode",
        abstract: "Run CLIP-L and T5 on a prompt and write prompt_embeds, pooled_prompt_embeds and CLIP's last hidden state.",
        discussion: """
            The output (safetensors, fp32) works as --prompt-embeds for generate and bench; `clip_last_hidden` [1, 77, 768] \
            is CLIP's final-normed sequence, for checking the encoder.
            """)

    @Option(help: "A diffusers FLUX folder with tokenizer/, tokenizer_2/, text_encoder/ and text_encoder_2/.")
    var textEncoders: String

    @Option(help: "The prompt.")
    var prompt: String?

    @Option(help: "Read the prompt from this UTF-8 text file.")
    var promptFile: String?

    @Option(help: "T5 tokens the prompt is padded or truncated to.")
    var maxSequenceLength = 512

    @Option(help: "cpu or cuda.")
    var device: String = "cpu"

    @Option(help: "T5's linear layers on cuda: bf16, or fp8 (e4m3, weights per output channel, activations per row; sm_89+). CLIP-L stays in bf16.")
    var t5Precision: String = "bf16"

    @Option(help: "Encode this many times and print each run's time: the first runs encode the prompt's words in reverse order, the last one the prompt itself, which is written. On cuda the second run captures CLIP's graph and the third T5's; later runs replay both with new tokens.")
    var runs = 1

    @Option(help: "Where to write the embeddings (safetensors).")
    var out: String

    func validate() throws {
        guard (prompt == nil) != (promptFile == nil) else { throw ValidationError("give exactly one of --prompt and --prompt-file") }
        guard (1...4096).contains(maxSequenceLength) else { throw ValidationError("--max-sequence-length must be in 1...4096") }
        guard (1...100).contains(runs) else { throw ValidationError("--runs must be in 1...100") }
        guard ["bf16", "fp8"].contains(t5Precision) else { throw ValidationError("--t5-precision is bf16 or fp8") }
        guard t5Precision == "bf16" || device == "cuda" else { throw ValidationError("--t5-precision fp8 needs --device cuda") }
    }

    func run() throws {
        try reportingErrors { try runOnDevice(device, precision: t5Precision, self) }
    }

    func execute<B: Backend>(on backend: B) throws {
        try FileIO.checkWritable(out)
        let text = try prompt ?? PromptFile.read(promptFile!)
        guard !text.isEmpty else { throw KilnError.invalidArgument("the prompt is empty") }
        let encoders = try TextEncoders.load(modelFolder: textEncoders, backend: backend, fp8T5: t5Precision == "fp8")
        let warmup = text.split(separator: " ").reversed().joined(separator: " ")
        var sequence: B.Tensor?, clip: (lastHidden: B.Tensor, pooled: B.Tensor)?
        for run in 0..<runs {
            // The last run's outputs go first: a capture can only reuse blocks the pool holds again.
            (sequence, clip) = (nil, nil)
            let start = MonotonicClock.now()
            let prompt = run == runs - 1 ? text : warmup
            clip = try encoders.clip(ids: encoders.clipIds(prompt), backend)
            sequence = try encoders.t5(ids: encoders.t5Ids(prompt, maxLength: maxSequenceLength), backend)
            try backend.synchronize()
            if runs > 1 { fputs("kiln: encode run \(run + 1) of \(runs): \(BenchCommand.rounded((MonotonicClock.now() - start) * 1000)) ms\n", stderr) }
        }
        guard let sequence, let clip else { return }
        try SafeTensorsWriter.write([.init("prompt_embeds", backend.host(sequence)), .init("pooled_prompt_embeds", backend.host(clip.pooled)),
                                     .init("clip_last_hidden", backend.host(clip.lastHidden))],
                                    metadata: ["prompt": text, "max_length": String(maxSequenceLength)], to: out)
    }
}
