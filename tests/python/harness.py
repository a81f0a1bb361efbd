"""A dozen lines of test runner, so that the Python tests need nothing beyond numpy (no pytest in CI)."""
import traceback


class Failure(AssertionError):
    pass


def check(ok, what):
    if not ok:
        raise Failure(what)


def raises(fn, *needles, exc=ValueError):
    """fn() must raise `exc` whose message contains every needle (the argument's name, the value)."""
    try:
        fn()
    except exc as e:
        missing = [n for n in needles if n not in str(e)]
        check(not missing, "message %r lacks %r" % (str(e), missing))
        return
    except Exception as e:  # noqa: BLE001: a wrong exception type is a failure to report, not to raise
        raise Failure("expected %s containing %r, got %s: %s" % (exc.__name__, needles, type(e).__name__, e))
    raise Failure("expected %s containing %r, nothing raised" % (exc.__name__, needles))


def run_all(namespace):
    """Runs every test_* function in `namespace`; returns the exit code (0 = all passed)."""
    tests = [(k, v) for k, v in namespace.items() if k.startswith("test_") and callable(v)]
    failed = 0
    for name, fn in tests:
        try:
            fn()
            print("ok   %s" % name)
        except Exception:  # noqa: BLE001
            failed += 1
            print("FAIL %s\n%s" % (name, traceback.format_exc()))
    print("%d of %d tests passed" % (len(tests) - failed, len(tests)))
    return 1 if failed else 0
