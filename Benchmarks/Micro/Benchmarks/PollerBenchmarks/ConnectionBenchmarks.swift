// Allocations (and time) per read and per write on PollerNet's connection, through the
// allocating API (`read(maxBytes:)` returns a new array, `write(_: [UInt8])`) and through a
// caller's buffer (`read(into:)`, `write(_: UnsafeRawBufferPointer)`): issue 15 asks for both,
// before and after. One task on the poller's executor writes a byte on one end of a loopback
// TCP connection, reads it on the other, writes it back and reads it again: two reads and two
// writes per operation counted here. Loopback delivers at once, so the reads rarely park.
import Benchmark
import Poller
import PollerNet

/// A connected loopback pair on `poller`: (client, server).
private func connectedPair(_ poller: Poller) async throws -> (Connection, Connection) {
    let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
    defer { Task { try? await listener.close() } }
    async let accepted = listener.accept()
    let client = try await Connection.dial(listener.localAddress, timeout: .seconds(5), poller: poller)
    return (client, try await accepted)
}

func connectionBenchmarks() {
    for backend in [BackendChoice.epoll, .ioUring] {
        Benchmark("connection round trip, read(maxBytes:) and write([UInt8]): 2 reads + 2 writes (\(backend))") { benchmark in
            guard let poller = try? Poller(backend: backend) else { return }
            defer { poller.shutdown() }
            let (client, server) = try await connectedPair(poller)
            let n = benchmark.scaledIterations.count
            try await withTaskExecutorPreference(poller.executor) {
                benchmark.startMeasurement()
                for _ in 0..<n {
                    try await client.write([7])
                    let got = try await server.read(maxBytes: 1)
                    try await server.write(got)
                    _ = try await client.read(maxBytes: 1)
                }
                benchmark.stopMeasurement()
            }
            try await client.close()
            try await server.close()
        }

        Benchmark("connection round trip, read(into:) and write(UnsafeRawBufferPointer): 2 reads + 2 writes (\(backend))") { benchmark in
            guard let poller = try? Poller(backend: backend) else { return }
            defer { poller.shutdown() }
            let (client, server) = try await connectedPair(poller)
            let n = benchmark.scaledIterations.count
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 1)
            defer { buffer.deallocate() }
            buffer[0] = 7
            let one = UnsafeRawBufferPointer(rebasing: buffer[0..<1])
            try await withTaskExecutorPreference(poller.executor) {
                benchmark.startMeasurement()
                for _ in 0..<n {
                    try await client.write(one)
                    _ = try await server.read(into: buffer)
                    try await server.write(one)
                    _ = try await client.read(into: buffer)
                }
                benchmark.stopMeasurement()
            }
            try await client.close()
            try await server.close()
        }
    }
}
