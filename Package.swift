// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "Poller",
    products: [
        .library(name: "Poller", targets: ["Poller"]),
        .library(name: "PollerNet", targets: ["PollerNet"]),
        .executable(name: "poller-demo", targets: ["poller-demo"]),
        .executable(name: "poller-echo", targets: ["poller-echo"]),
        .executable(name: "poller-http", targets: ["poller-http"]),
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
        // Go's internal/poll.FD and net.Conn over the poller: listeners, connections, dial.
        .target(name: "PollerNet", dependencies: ["Poller", "CPoller"]),
        .executableTarget(name: "poller-demo", dependencies: ["Poller"]),
        // What the two servers share (flag checks, logging, the accept-error log, serving until SIGTERM); internal.
        .target(name: "ServerSupport", dependencies: ["Poller", "PollerNet"]),
        .executableTarget(name: "poller-echo", dependencies: ["Poller", "PollerNet", "ServerSupport"]),
        // poller-http's streaming HTTP/1.1 request parser (RFC 9112); internal, no dependency.
        .target(name: "HTTPParsing"),
        .executableTarget(name: "poller-http", dependencies: ["Poller", "PollerNet", "ServerSupport", "HTTPParsing"]),
        .executableTarget(name: "poller-microbench", dependencies: ["Poller", "PollerNet", "CPoller"]),
        // The echo load generator (C, single-threaded epoll, verifies every echoed byte).
        .executableTarget(name: "poller-loadgen"),
        .executableTarget(name: "poller-soak"),
        // The README's examples, compiled with everything else so they cannot rot.
        .executableTarget(name: "example-go-style", dependencies: ["Poller"], path: "Examples/GoStyle"),
        .executableTarget(name: "example-swift-style", dependencies: ["Poller"], path: "Examples/SwiftStyle"),
        .executableTarget(name: "example-echo-server", dependencies: ["PollerNet"], path: "Examples/EchoServer"),
        .executableTarget(name: "example-group-server", dependencies: ["PollerNet"], path: "Examples/GroupServer"),
        .executableTarget(name: "example-default-executor", dependencies: ["Poller"], path: "Examples/DefaultExecutor"),
        .executableTarget(name: "example-getting-started", dependencies: ["Poller", "PollerNet"], path: "Examples/GettingStarted"),
        .testTarget(name: "PollerTests", dependencies: ["Poller", "CPoller"]),
        // Test support: counts heap allocations per thread by interposing malloc and friends
        // in the test executable (TestReadWriteAllocs). No library or executable depends on it.
        .target(name: "CAllocCounter", path: "Tests/CAllocCounter"),
        .testTarget(name: "PollerNetTests", dependencies: ["PollerNet", "Poller", "CPoller", "HTTPParsing", "CAllocCounter"]),
    ],
    swiftLanguageModes: [.v6]
)
