// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "Poller",
    products: [
        .library(name: "Poller", targets: ["Poller"]),
    ],
    traits: [
        .trait(name: "IOUring", description: "Compile the io_uring backend (needs liburing-dev)."),
        .default(enabledTraits: ["IOUring"]),
    ],
    targets: [
        // The C shim: thin syscall wrappers for epoll, io_uring (liburing), the wake-up
        // channel and a futex parker. No policy lives here.
        .target(
            name: "CPoller",
            cSettings: [
                .define("_GNU_SOURCE"),
                .define("CPOLLER_IOURING", .when(traits: ["IOUring"])),
            ],
            linkerSettings: [.linkedLibrary("uring", .when(traits: ["IOUring"]))]
        ),
        .target(name: "Poller", dependencies: ["CPoller"]),
        .executableTarget(name: "poller-demo", dependencies: ["Poller"]),
        .testTarget(name: "PollerTests", dependencies: ["Poller", "CPoller"]),
    ],
    swiftLanguageModes: [.v6]
)
