import Synchronization

/// The slots of one poller and the free list.
final class DescriptorTable: Sendable {
    private struct Storage {
        var slots: [DescriptorSlot] = []
        var free: [UInt32] = []
        var openCount = 0
    }

    private let storage = Mutex(Storage())

    /// A free slot, reusing the most recently freed one.
    func allocate() -> DescriptorSlot {
        storage.withLockAnnotated { s in
            s.openCount += 1
            if let index = s.free.popLast() { return s.slots[Int(index)] }
            let slot = DescriptorSlot(index: UInt32(s.slots.count))
            s.slots.append(slot)
            return slot
        }
    }

    func release(_ slot: DescriptorSlot) {
        storage.withLockAnnotated { s in
            s.openCount -= 1
            s.free.append(slot.index)
        }
    }

    func slot(at index: UInt32) -> DescriptorSlot? {
        storage.withLockAnnotated { s in Int(index) < s.slots.count ? s.slots[Int(index)] : nil }
    }

    /// Resolves many indices under one lock acquisition (the poller's event batches).
    func resolve(_ indices: UnsafeBufferPointer<UInt32>, into out: inout [DescriptorSlot?]) {
        storage.withLockAnnotated { s in
            for index in indices {
                out.append(Int(index) < s.slots.count ? s.slots[Int(index)] : nil)
            }
        }
    }

    var allSlots: [DescriptorSlot] { storage.withLockAnnotated { $0.slots } }
    var openCount: Int { storage.withLockAnnotated { $0.openCount } }
}
