import Dispatch

/// Runs `body(i)` for i in 0..<count on all cores, in contiguous chunks. Work items must be independent.
@inline(__always)
func parallelFor(_ count: Int, minimumChunk: Int = 1, _ body: (Int) -> Void) {
    guard count > 0 else { return }
    let workers = min(CPUBackend.threadCount, max(1, count / max(1, minimumChunk)))
    if workers == 1 {
        for i in 0..<count { body(i) }
        return
    }
    let chunk = (count + workers - 1) / workers
    DispatchQueue.concurrentPerform(iterations: workers) { worker in
        let start = worker * chunk
        let end = min(count, start + chunk)
        if start < end { for i in start..<end { body(i) } }
    }
}

/// Dot product of `n` floats, eight lanes at a time.
@inline(__always)
func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var acc = SIMD8<Float>()
    var i = 0
    while i + 8 <= n {
        acc += UnsafeRawPointer(a + i).loadUnaligned(as: SIMD8<Float>.self)
            * UnsafeRawPointer(b + i).loadUnaligned(as: SIMD8<Float>.self)
        i += 8
    }
    var sum = acc.sum()
    while i < n {
        sum += a[i] * b[i]
        i += 1
    }
    return sum
}
