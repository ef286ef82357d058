"""What every ``lmfit3d`` command shares: the parser classes, the sub-command helper, the options
that several commands take (model file, landmark loss) and the progress line.

Standard library only, like :mod:`lmfit3d.cli`, so that ``lmfit3d --help`` answers at once.
"""
import argparse
import inspect
import sys

PROG = "lmfit3d"


class CommandLineError(ValueError):
    """Bad command-line arguments (reported like any other user error)."""


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors raise instead of printing usage and exiting."""

    def error(self, message):
        raise CommandLineError(f"{message} (see `{self.prog} --help`)")


class SubFormatter(argparse.HelpFormatter):
    """Command help: wraps descriptions to the terminal width."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=32)


def say(msg):
    """Progress message on stderr (stdout is kept for results)."""
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def model_from(path):
    from .model import load_model
    return load_model(path)


def subcommand(sub, name, adder=None, **kw):
    """A sub-command's parser on ``sub``, formatted by :class:`SubFormatter`: ``help`` (and ``epilog``) as
    ``add_parser`` takes them, the description the docstring of the function ``adder`` that adds its
    arguments (or ``description``)."""
    if adder is not None:
        kw["description"] = inspect.cleandoc(adder.__doc__ or "")
    return sub.add_parser(name, formatter_class=SubFormatter, **kw)


def add_model_option(p):
    p.add_argument("--model", metavar="PATH", help="model file (default: the cached model)")


def add_loss_options(p):
    p.add_argument("--landmark-loss", choices=("squared", "cauchy"), default="squared",
                   help="loss on each landmark's residual: the paper's squared (Gaussian) loss, or a robust "
                        "Cauchy loss that lets landmarks far off (occlusions, tracking failures) count less")
    p.add_argument("--loss-scale", type=float, default=3.0, metavar="C",
                   help="scale of the Cauchy loss in sigmas: residuals beyond C sigma are down-weighted")


def loss_config(args, cfg):
    """``cfg`` (a FitConfig) with the command line's landmark loss."""
    from dataclasses import replace
    return replace(cfg, landmark_loss=args.landmark_loss, loss_scale=args.loss_scale)
