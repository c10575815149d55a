/// Jobs waiting for an instant (a `Task.sleep` under the group installed as Swift's default
/// executor), in one binary min-heap per poller, beside the descriptor deadlines of
/// ``DeadlineHeap`` and under the same mutex (`Poller.timers`), so the poller's sleep is
/// bounded by whichever comes first.
///
/// Jobs due at the same instant run in the order they were scheduled: each entry carries a
/// sequence number that breaks ties. Generic over the job only so tests can schedule numbers.
struct DelayedJobHeap<Job> {
    struct Entry {
        var when: Int64
        var sequence: UInt64
        var job: Job

        func precedes(_ other: Entry) -> Bool {
            when != other.when ? when < other.when : sequence < other.sequence
        }
    }

    private var heap: [Entry] = []
    private var nextSequence: UInt64 = 0

    var count: Int { heap.count }
    var earliest: Int64? { heap.first?.when }

    /// Schedules `job` for the CLOCK_MONOTONIC instant `when` (nanoseconds).
    mutating func schedule(_ job: Job, at when: Int64) {
        heap.append(Entry(when: when, sequence: nextSequence, job: job))
        nextSequence &+= 1
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child].precedes(heap[parent]) else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    /// Moves every job due at `now` or earlier into `due`, earliest first.
    mutating func popDue(now: Int64, into due: inout [Job]) {
        while let first = heap.first, first.when <= now {
            due.append(first.job)
            removeFirst()
        }
    }

    /// Empties the heap: every entry, in no particular order.
    mutating func removeAll() -> [Entry] {
        defer { heap.removeAll() }
        return heap
    }

    private mutating func removeFirst() {
        let last = heap.removeLast()
        guard !heap.isEmpty else { return }
        heap[0] = last
        var parent = 0
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var first = parent
            if left < heap.count, heap[left].precedes(heap[first]) { first = left }
            if right < heap.count, heap[right].precedes(heap[first]) { first = right }
            if first == parent { return }
            heap.swapAt(parent, first)
            parent = first
        }
    }
}
