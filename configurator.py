"""
nanoGPT-style configuration: `python train.py config/x.py --key=value ...`

Defaults are the module-level values of the calling script. A config file is Python,
run in a fresh namespace; its public names override the defaults. `--key=value` is parsed
with ast.literal_eval (a bare word stays a string). Later arguments win. An unknown key or a
value of the wrong type, or a config file that does not run, raises ConfigError, which the
scripts report in one line (report_errors); an int is accepted for a float.
"""
import argparse
import ast
import difflib
import os
import signal
import sys
import time
import types


class ConfigError(ValueError):
    """A wrong input (config value, checkpoint, run directory) or a run that cannot go on: the scripts
    report it in one line (report_errors)."""


class DataError(Exception):
    """A problem with the data or its source, reported in one line."""


def report_errors(script):
    """From here on, an uncaught ConfigError or DataError ends the script with its message as one line on
    stderr and exit status 1; any other exception keeps its traceback. So does a Ctrl-C until the script takes
    SIGINT itself: it exits at once, where a KeyboardInterrupt could be swallowed by an import under way."""

    def say(message):
        if os.environ.get('RANK', '0') == '0':  # under torchrun, every process refuses the same input: say it once
            print(f"{script}: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
        else:  # torchrun stops every process once one exits: the others wait, so that rank 0 has said it
            time.sleep(2)

    def hook(exc_type, exc, tb):
        if not issubclass(exc_type, (ConfigError, DataError)):
            return sys.__excepthook__(exc_type, exc, tb)
        say(str(exc))

    def interrupted(signum, frame):
        say('interrupted (Ctrl-C) before training began')
        os._exit(1)

    sys.excepthook = hook
    signal.signal(signal.SIGINT, interrupted)


def boolean(s):
    """True or False, spelled as --key=value takes them; for argparse's type=."""
    if s not in ('True', 'False'):
        raise argparse.ArgumentTypeError(f"expected True or False, got {s!r}")
    return s == 'True'


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line, `prog: error: message`, as every error here (argparse's own
    prints the usage too)."""

    def error(self, message):
        sys.exit(f"{self.prog}: error: {message}")


def defaults_of(script):
    """A script's default config, without running it: its code up to `config_keys = ...`, run in a fresh namespace."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), script)) as f:
        source = f.read()
    namespace, hook, sigint = {}, sys.excepthook, signal.getsignal(signal.SIGINT)
    exec(compile(source[:source.index('\nconfig_keys = ')], script, 'exec'), namespace)
    sys.excepthook = hook  # the script's report_errors is for the script
    signal.signal(signal.SIGINT, sigint)
    return {k: v for k, v in namespace.items() if not k.startswith('_') and isinstance(v, (int, float, bool, str, type(None)))}


def _check(defaults, key, value, source):
    if key not in defaults:
        close = [k for k in defaults if key.startswith(k)]  # a key spelled out: optimizer for opt
        close += [k for k in difflib.get_close_matches(key, defaults, n=3, cutoff=0.5) if k not in close]
        close = close[:3]
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"{source}: unknown config key '{key}'{hint}")
    default = defaults[key]
    if default is None or type(value) is type(default):
        return value
    if type(default) is float and type(value) is int:
        return float(value)
    raise ConfigError(f"{source}: {key} must be a {type(default).__name__} like {default!r}, "
                     f"got {value!r} ({type(value).__name__})")


def overrides_from(defaults, argv):
    """The keys that argv sets (config files and --key=value; later ones win), checked against defaults."""
    config = {}
    for arg in argv:
        if arg.startswith('--'):
            key, sep, value = arg[2:].partition('=')
            if not sep:
                raise ConfigError(f"expected --key=value, got '{arg}'")
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                pass  # a bare word, e.g. --opt=adamw
            overrides, source = {key: value}, arg
        else:
            try:
                with open(arg) as f:
                    code = f.read()
            except OSError as e:
                raise ConfigError(f"cannot read config file '{arg}': {e.strerror}")
            namespace = {}
            try:
                exec(compile(code, arg, 'exec'), namespace)
            except Exception as e:  # a config file is a program: whatever it raises, say where in one line
                raise ConfigError(f"config file '{arg}' does not run: {type(e).__name__}: {e}") from None
            overrides = {k: v for k, v in namespace.items()
                         if not k.startswith('_') and not isinstance(v, types.ModuleType) and not callable(v)}
            source = arg
        for key, value in overrides.items():
            config[key] = _check(defaults, key, value, source)
    return config


def configure(defaults, argv):
    """Return a copy of `defaults` with the overrides from argv applied."""
    return {**defaults, **overrides_from(defaults, argv)}
