import Glibc
import Testing

@testable import Poller

@Suite("Errno names in messages")
struct ErrnoNameTests {
    @Test("every errno is named by glibc's own name and message, not only those a table listed")
    func everyErrnoHasItsName() {
        #expect(ErrnoName.describe(EMFILE) == "EMFILE (Too many open files)")
        // EHOSTDOWN and EKEYEXPIRED were missing from the table this replaced.
        #expect(ErrnoName.describe(EHOSTDOWN) == "EHOSTDOWN (Host is down)")
        #expect(ErrnoName.describe(EKEYEXPIRED).hasPrefix("EKEYEXPIRED ("))
    }

    @Test("an unknown errno is described by its number and glibc's message")
    func unknownErrnoHasItsNumber() {
        #expect(ErrnoName.describe(9999) == "errno 9999 (Unknown error 9999)")
    }
}
