// swift-tools-version:6.1
// Micro-benchmarks of the poller's hot paths with ordo-one/benchmark, in their own package so
// neither the library nor its tests depend on it:
//   cd Benchmarks/Micro && swift package benchmark
import PackageDescription

let package = Package(
    name: "PollerMicroBenchmarks",
    dependencies: [
        .package(name: "Poller", path: "../.."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "PollerBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "Poller", package: "Poller"),
                .product(name: "PollerNet", package: "Poller"),
            ],
            path: "Benchmarks/PollerBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
