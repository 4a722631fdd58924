"""`dnsward check --strict` makes every warning an error, as -Werror does: each kind of
warning the linter can emit, alone in an otherwise clean list, exits 0 without --strict and 1
with it, reported on the same line with "error" for "warning".

The date is fixed with --today and the Public Suffix List is a small one written here, so
the outcome depends on neither the wall clock nor the machine's publicsuffix package. That
list knows `com` and `net` only: it predates `blob.core.windows.net` as Debian 12's does."""
import os
import re
import tempfile
import unittest

from harness import BIN, ROOT, run

TODAY = "2026-11-27"
JUST = " owner=tests why=e2e data=none unreachable=tests reviewed=2026-11-01"

# One list per kind of warning: (what the warning says, the list).
WARNINGS = {
    "wildcard below a registrable domain": (
        "is a wildcard below the registrable domain windows.net",
        "*.blob.core.windows.net" + JUST),
    "stale review": (
        "was last reviewed 118 days ago",
        "old.example owner=tests why=e2e data=none unreachable=tests reviewed=2026-08-01"),
    "review in the future": (
        "has a review date in the future",
        "soon.example owner=tests why=e2e data=none unreachable=tests reviewed=2026-12-01"),
    "duplicate": (
        "'dup.example' duplicates",
        "dup.example" + JUST + "\ndup.example" + JUST),
    "exact name covered by a wildcard": (
        "'files.pypi.org' is already covered by '*.pypi.org'",
        "*.pypi.org" + JUST + "\nfiles.pypi.org" + JUST),
}


def write(directory, name, text):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(text)
    return path


class Strict(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="dnsward-lint-strict-")
        cls.psl = write(cls.dir, "old_psl.dat", "// a list older than blob.core.windows.net\ncom\nnet\n")

    def check(self, path, *flags):
        return run([BIN, "check", "--psl", self.psl, "--today", TODAY, *flags, path])

    def test_every_warning_kind_is_walked(self):
        # The linter emits each warning kind from one `add(e, false, ...)`: a new kind fails
        # here until it has a case above.
        with open(os.path.join(ROOT, "resolver", "lint.cc")) as f:
            kinds = len(re.findall(r"\badd\(e, false,", f.read()))
        self.assertEqual(kinds, len(WARNINGS))

    def test_the_clean_list_is_clean_even_with_strict(self):
        path = write(self.dir, "clean.allow", "pypi.org" + JUST + "\n")
        for flags in ((), ("--strict",)):
            r = self.check(path, *flags)
            self.assertEqual((r.returncode, r.stdout), (0, ""), r.stdout + r.stderr)

    def test_each_warning_exits_0_without_strict_and_1_with_it(self):
        for kind, (message, text) in WARNINGS.items():
            with self.subTest(kind):
                path = write(self.dir, kind.replace(" ", "_") + ".allow", "pypi.org" + JUST + "\n" + text + "\n")
                lax = self.check(path)
                self.assertEqual(lax.returncode, 0, lax.stdout + lax.stderr)
                lines = lax.stdout.splitlines()
                self.assertEqual(len(lines), 1, lax.stdout)
                self.assertRegex(lines[0], "^" + re.escape(path) + r":\d+: warning: .*" + re.escape(message))
                strict = self.check(path, "--strict")
                self.assertEqual(strict.returncode, 1, strict.stdout + strict.stderr)
                self.assertEqual(strict.stdout, lax.stdout.replace(": warning: ", ": error: ", 1))


if __name__ == "__main__":
    unittest.main()
