"""SIGTERM as Ctrl-C: how Slurm, Kubernetes, spot preemption and `kill` stop a process. The same clean stop as
Ctrl-C (the signal becomes SIGINT, so whoever handles Ctrl-C at that moment handles it: Ray Tune's stop, or a
KeyboardInterrupt), and the shell's exit status of the signal that came: 143 for SIGTERM, 130 for Ctrl-C."""
import signal
import threading

_terminated = threading.Event()


def _as_ctrl_c(signum, frame):
    _terminated.set()
    signal.raise_signal(signal.SIGINT)


def catch_sigterm(keyboard_interrupt=False):
    """Handle SIGTERM as Ctrl-C from now on (again after ray.init, which installs its own handler).
    keyboard_interrupt: Ctrl-C raises KeyboardInterrupt, as a plain loop (dogs.train) expects, even where an earlier
    Ray Tune run of this process left its own Ctrl-C handler installed."""
    _terminated.clear()   # a SIGTERM of an earlier command of this process (tests run several) is not this one's
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _as_ctrl_c)
        if keyboard_interrupt:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def exit_status():
    """130 after Ctrl-C, 143 (128 + 15) after SIGTERM."""
    return 128 + (signal.SIGTERM if _terminated.is_set() else signal.SIGINT)

