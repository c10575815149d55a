// swift-tools-version:6.1
// Peer servers for scripts/bench.sh, kept in their own package so that the Poller library
// never depends on SwiftNIO: `swift build -c release --package-path Benchmarks`.
import PackageDescription

let package = Package(
    name: "PollerBenchmarks",
    products: [
        .executable(name: "nio-echo", targets: ["nio-echo"]),
        .executable(name: "nio-http", targets: ["nio-http"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        // SwiftNIO echo server on ONE event loop (the peer for poller-echo).
        .executableTarget(
            name: "nio-echo",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // SwiftNIO HTTP/1.1 keep-alive "hello" server on ONE event loop.
        .executableTarget(
            name: "nio-http",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
