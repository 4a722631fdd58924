"""Runs e2e suites (unittest modules of test/e2e) inside the guest and reports every case on
the console as `DWVM check e2e.MODULE.CLASS.TEST ok|fail|skip`, then one summary line."""
import os
import sys
import traceback
import unittest

directory, suites = sys.argv[1], sys.argv[2:]
os.chdir(directory)
sys.path.insert(0, directory)


class Result(unittest.TextTestResult):
    def report(self, test, verdict, detail=""):
        detail = " ".join(detail.split())[-600:]
        print(f"DWVM check e2e.{test.id()} {verdict} {detail}", flush=True)

    def addSuccess(self, test):
        super().addSuccess(test)
        self.report(test, "ok")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.report(test, "fail", "".join(traceback.format_exception(*err)))

    def addError(self, test, err):
        super().addError(test, err)
        self.report(test, "fail", "".join(traceback.format_exception(*err)))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        print(f"DWVM skip e2e.{test.id()} {reason}", flush=True)


suite = unittest.defaultTestLoader.loadTestsFromNames(suites)
r = unittest.TextTestRunner(stream=sys.stdout, verbosity=1, resultclass=Result).run(suite)
bad = len(r.failures) + len(r.errors)
print(f"DWVM check e2e.summary {'ok' if bad == 0 and r.testsRun else 'fail'} "
      f"ran={r.testsRun} failed={bad} skipped={len(r.skipped)}", flush=True)
