/// The deadline timers of every descriptor of one poller, in one indexed binary min-heap.
///
/// A descriptor slot owns two timers: its read timer (which expires both directions when the
/// read and write deadlines are equal, Go's combined timer) and its write timer. A timer is
/// in the heap at most once; re-arming moves it in place, so a service that pushes a deadline
/// forward on every read keeps the heap at one entry per armed timer.
///
/// Each entry carries the descriptor's sequence number for that timer at arming time. The
/// descriptor bumps the sequence whenever the deadline changes, is cleared, or the slot is
/// reused, so an entry popped after such a change is recognised as stale under the
/// descriptor's lock and ignored (Go's rseq/wseq).
///
/// Locking: the heap has its own mutex, taken inside a descriptor's lock when a deadline is
/// set. Expired entries are popped under the heap's mutex and run after it is released, so a
/// timer callback (which takes the descriptor's lock) never holds the heap's mutex (Go issue
/// 35532, a lock-order deadlock).
struct DeadlineHeap {
    struct Timer {
        var when: Int64
        var slot: UInt32
        var isWrite: Bool
        /// For the read timer: also expire the write deadline (read and write deadlines equal).
        var expiresBoth: Bool
        var sequence: UInt64

        var id: Int { Int(slot) &* 2 &+ (isWrite ? 1 : 0) }
    }

    private var heap: [Timer] = []
    /// Heap index of each timer id, or -1.
    private var position: [Int32] = []

    var count: Int { heap.count }
    var earliest: Int64? { heap.first?.when }

    /// Arms `timer` at `timer.when`, moving it if it is already armed.
    mutating func schedule(_ timer: Timer) {
        let id = timer.id
        if id >= position.count {
            position.append(contentsOf: repeatElement(-1, count: id + 1 - position.count))
        }
        let at = Int(position[id])
        if at >= 0 {
            let earlier = timer.when < heap[at].when
            heap[at] = timer
            if earlier { siftUp(at) } else { siftDown(at) }
        } else {
            heap.append(timer)
            position[id] = Int32(heap.count - 1)
            siftUp(heap.count - 1)
        }
    }

    /// Disarms the timer of `slot` for the given direction, if armed.
    mutating func cancel(slot: UInt32, isWrite: Bool) {
        let id = Int(slot) * 2 + (isWrite ? 1 : 0)
        guard id < position.count, position[id] >= 0 else { return }
        remove(at: Int(position[id]))
    }

    /// Removes and returns every timer due at or before `now`, earliest first.
    mutating func popExpired(now: Int64, into out: inout [Timer]) {
        while let first = heap.first, first.when <= now {
            out.append(first)
            remove(at: 0)
        }
    }

    private mutating func remove(at index: Int) {
        let removed = heap[index]
        position[removed.id] = -1
        let last = heap.removeLast()
        guard index < heap.count else { return }
        heap[index] = last
        position[last.id] = Int32(index)
        siftDown(index)
        siftUp(index)
    }

    private mutating func siftUp(_ start: Int) {
        var i = start
        while i > 0 {
            let parent = (i - 1) / 2
            guard heap[i].when < heap[parent].when else { break }
            swapAt(i, parent)
            i = parent
        }
    }

    private mutating func siftDown(_ start: Int) {
        var i = start
        let n = heap.count
        while true {
            let left = 2 * i + 1
            guard left < n else { break }
            var smallest = left
            let right = left + 1
            if right < n && heap[right].when < heap[left].when { smallest = right }
            guard heap[smallest].when < heap[i].when else { break }
            swapAt(i, smallest)
            i = smallest
        }
    }

    private mutating func swapAt(_ a: Int, _ b: Int) {
        heap.swapAt(a, b)
        position[heap[a].id] = Int32(a)
        position[heap[b].id] = Int32(b)
    }
}
