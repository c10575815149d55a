// swift-tools-version:6.1
import PackageDescription

// Poller with the server ecosystem's packages: swift-service-lifecycle and swift-log
// (PollerServiceLifecycle), swift-system (PollerSystem), swift-argument-parser (the example
// service). A second package, not products of the root one, so that a package depending on
// Poller or PollerNet fetches and builds nothing else: SwiftPM fetches every dependency a
// manifest declares unless a trait turns it off, and a trait enabled by default reaches every
// consumer (measured with swift 6.3: an unconditional dependency of an unused product is
// still fetched).
let poller: Target.Dependency = .product(name: "Poller", package: "Poller")
let pollerNet: Target.Dependency = .product(name: "PollerNet", package: "Poller")
let logging: Target.Dependency = .product(name: "Logging", package: "swift-log")
let serviceLifecycle: Target.Dependency = .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")
let system: Target.Dependency = .product(name: "SystemPackage", package: "swift-system")

let package = Package(
    name: "PollerIntegrations",
    products: [
        .library(name: "PollerServiceLifecycle", targets: ["PollerServiceLifecycle"]),
        .library(name: "PollerSystem", targets: ["PollerSystem"]),
        .executable(name: "poller-service", targets: ["poller-service"]),
    ],
    dependencies: [
        .package(name: "Poller", path: ".."),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .target(name: "PollerServiceLifecycle", dependencies: [pollerNet, logging, serviceLifecycle]),
        .target(name: "PollerSystem", dependencies: [pollerNet, system]),
        .executableTarget(
            name: "poller-service",
            dependencies: [
                "PollerServiceLifecycle", poller, pollerNet, logging, serviceLifecycle,
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(
            name: "PollerIntegrationsTests",
            dependencies: ["PollerServiceLifecycle", "PollerSystem", poller, pollerNet, logging, serviceLifecycle, system]
        ),
    ],
    swiftLanguageModes: [.v6]
)
