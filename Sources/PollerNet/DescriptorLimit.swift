import Glibc

/// The process's descriptor limit, as the accept path sees it.
enum DescriptorLimit {
    /// The soft RLIMIT_NOFILE now, or nil when it is unlimited or unreadable. Read on every
    /// call, never cached: the limit may be lowered or raised at any time (`setrlimit`,
    /// `prlimit`), and a stale, higher value would let accepts fill the table.
    static var current: Int? {
        var limit = rlimit()
        // RLIM_INFINITY is all ones, so the bound below also excludes it.
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur <= rlim_t(Int32.max)
        else { return nil }
        return Int(limit.rlim_cur)
    }

    /// Whether descriptor `fd` lies in the top `headroom` slots below the soft limit.
    ///
    /// Since the kernel gives out the lowest free number, a new descriptor up there means
    /// that every lower slot was in use when it was made: fewer than `headroom` slots were
    /// free after it. With no readable limit there is nothing to keep free.
    static func isInHeadroom(_ fd: Int32, headroom: Int) -> Bool {
        guard let limit = current else { return false }
        return Int(fd) >= limit - headroom
    }
}
