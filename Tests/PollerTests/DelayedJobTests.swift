import Testing

@testable import Poller

// The heap behind Task.sleep under the installed default executor (DelayedJobHeap) and the
// Duration conversion it is fed through. The installed executor itself is pinned end to end
// by PollerNetTests "Plain Task {} on the poller threads".

@Suite("Delayed jobs")
struct DelayedJobTests {
    @Test("Delayed jobs come out earliest first, and those due at the same instant in the order they were scheduled")
    func delayedJobsComeOutInOrder() {
        var heap = DelayedJobHeap<Int>()
        let whens: [Int64] = [50, 10, 30, 10, 70, 30, 10, 20]
        for (i, when) in whens.enumerated() { heap.schedule(i, at: when) }
        #expect(heap.earliest == 10)
        var due: [Int] = []
        heap.popDue(now: 9, into: &due)
        #expect(due.isEmpty)
        heap.popDue(now: 30, into: &due)
        #expect(due == [1, 3, 6, 7, 2, 5])
        #expect(heap.earliest == 50)
        heap.popDue(now: .max, into: &due)
        #expect(due == [1, 3, 6, 7, 2, 5, 0, 4])
        #expect(heap.count == 0 && heap.earliest == nil)
    }

    @Test("A heap emptied at shutdown hands back every job it held")
    func removeAllHandsBackEveryJob() {
        var heap = DelayedJobHeap<Int>()
        for i in 0..<100 { heap.schedule(i, at: Int64((i * 7919) % 101)) }
        let entries = heap.removeAll()
        #expect(Set(entries.map(\.job)) == Set(0..<100))
        #expect(heap.count == 0)
    }

    @Test("A sleep's duration becomes whole nanoseconds, clamped at the ends of Int64")
    func durationsClampToInt64() {
        #expect(Duration.milliseconds(30).nanosecondsClamped == 30_000_000)
        #expect(Duration.nanoseconds(-5).nanosecondsClamped == -5)
        #expect(Duration.seconds(Int64.max).nanosecondsClamped == .max)
        #expect(Duration.seconds(Int64.min).nanosecondsClamped == .min)
    }
}
