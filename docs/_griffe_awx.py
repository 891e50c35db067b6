"""
Griffe extensions that let mkdocstrings render this library's source as written.

The docstrings are written for ``help()`` and for readers of the code: Sphinx
roles (``:meth:`open```), ``#:`` comments on attributes, ``Word::`` before a
literal block, and attrs classes whose ``__init__`` only exists at run time.
Griffe reads none of these on its own, so without this file the API page
showed raw roles, undocumented attributes and every attrs field as
"required". mkdocs.yml loads it (``extensions:`` of the python handler); it
changes nothing at run time.

- :class:`SphinxRoles` turns each role into a cross-reference, resolved the
  way Python resolves the name in the docstring's scope, that becomes a link
  when its target is on the site and plain code otherwise (a private helper).
- :class:`AttrsFields` gives every attrs class the ``__init__`` attrs would
  write (aliases, ``kw_only``, ``init=False``, defaults, factories and
  converters), so parameter tables show the real defaults, and shows a
  field's default, not its ``attrs.field(...)`` call, as its value.
- :class:`SphinxComments` reads ``#:`` comments above an attribute as its
  docstring.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

#: The roles the docstrings use; ``py:`` domains allowed.
ROLE = re.compile(
    r":(?:py:)?(?P<role>class|meth|func|attr|exc|data|mod|obj|const):`(?P<target>[^`]+)`"
)
#: A reST paragraph that introduces a literal block: ``Use it as::``.
LITERAL_INTRO = re.compile(r"(?m)^(?P<text>.*\S)?(?P<colons>\s*::)[ \t]*$")
ATTRS_DECORATORS = frozenset(
    {
        "attrs.define",
        "attrs.frozen",
        "attrs.mutable",
        "attr.s",
        "attr.attrs",
        "attr.define",
        "attr.frozen",
        "attr.mutable",
    }
)
ATTRS_FIELDS = frozenset({"attrs.field", "attr.field", "attr.ib", "attr.attrib"})
ATTRS_FACTORIES = frozenset({"attrs.Factory", "attr.Factory"})
CALLABLE_ROLES = frozenset({"meth", "func"})


def _objects(obj: griffe.Object) -> list[griffe.Object]:
    """*obj* and everything defined in it (imports excluded)."""
    found = [obj]
    for member in obj.members.values():
        if not member.is_alias:
            found.extend(_objects(member))  # type: ignore[arg-type]
    return found


# -- roles --------------------------------------------------------------------


def _resolve(obj: griffe.Object, target: str) -> str | None:
    """The full path *target* names in *obj*'s scope, None if unknown."""
    if target.startswith("."):
        # A relative module path, as in ``from ._sql import SQLStore``.
        package = (
            obj.module.path if obj.module.is_init_module else obj.module.path.rpartition(".")[0]
        )
        return package + target
    head, _, rest = target.partition(".")
    if head == obj.package.name:
        return target
    try:
        path = obj.resolve(head)
    except griffe.NameResolutionError:
        return None
    return f"{path}.{rest}" if rest else path


def _exists(obj: griffe.Object, path: str) -> bool:
    try:
        found = obj.modules_collection[path]
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return False
    return found is not None


def _reference(obj: griffe.Object, match: re.Match[str]) -> str:
    target = match["target"].strip()
    short = target.startswith("~")
    target = target.lstrip("~!")
    text = target.rpartition(".")[2] if short else target
    if match["role"] in CALLABLE_ROLES:
        text += "()"
    code = f"<code>{html.escape(text)}</code>"
    path = _resolve(obj, target)
    if path is None:
        return code
    if path.startswith(f"{obj.package.name}.") and not _exists(obj, path):
        # A warning fails `mkdocs build --strict`: a reference to something
        # renamed or removed is caught when the docs are built.
        griffe.logger.warning(
            "%s:%s: %s names %s, which does not exist",
            obj.relative_filepath,
            obj.lineno,
            match[0],
            path,
        )
    # "optional": a link where the target is rendered on the site, plain
    # code (with the full path as a tooltip) where it is private.
    return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'


def _literal_intro(match: re.Match[str]) -> str:
    # "Use it as::" reads "Use it as:"; a "::" alone on its line goes away.
    text = match["text"]
    return f"{text}:" if text and not match["colons"][0].isspace() else (text or "")


def render(obj: griffe.Object, text: str) -> str:
    """*text* (a docstring of *obj*) with its reST markup in Markdown."""
    text = ROLE.sub(lambda m: _reference(obj, m), text)
    return LITERAL_INTRO.sub(_literal_intro, text)


class SphinxRoles(griffe.Extension):
    """Sphinx roles and literal-block markers, rewritten for Markdown."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _objects(pkg):
            if obj.docstring is not None:
                obj.docstring.value = render(obj, obj.docstring.value)
            if isinstance(obj, griffe.Function | griffe.Class):
                for parameter in getattr(obj, "parameters", ()):
                    if parameter.docstring is not None:
                        parameter.docstring.value = render(obj, parameter.docstring.value)


# -- #: comments ---------------------------------------------------------------


class SphinxComments(griffe.Extension):
    """``#:`` comments right above an attribute become its docstring."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        for obj in _objects(pkg):
            if not isinstance(obj, griffe.Attribute) or obj.docstring is not None:
                continue
            if obj.lineno is None:
                continue
            lines = obj.module.lines
            comment: list[str] = []
            index = obj.lineno - 2  # the line above, 0-based
            while index >= 0 and lines[index].strip().startswith("#:"):
                comment.insert(0, lines[index].strip()[2:].strip())
                index -= 1
            if comment:
                obj.docstring = griffe.Docstring(
                    "\n".join(comment),
                    lineno=index + 2,
                    endlineno=obj.lineno - 1,
                    parent=obj,
                    parser=loader.docstring_parser,
                    parser_options=loader.docstring_options,
                )


# -- attrs ----------------------------------------------------------------------


def _call_arguments(expr: griffe.ExprCall) -> dict[str, Any]:
    arguments: dict[str, Any] = {}
    for index, argument in enumerate(expr.arguments):
        if isinstance(argument, griffe.ExprKeyword):
            arguments[argument.name] = argument.value
        else:
            arguments[f"#{index}"] = argument
    return arguments


def _attrs_decorator(cls: griffe.Class) -> griffe.Decorator | None:
    for decorator in cls.decorators:
        value = decorator.value
        if isinstance(value, griffe.Expr) and value.canonical_path in ATTRS_DECORATORS:
            return decorator
    return None


def _is_true(value: Any) -> bool:
    return str(value) == "True"


def _converter_annotation(cls: griffe.Class, converter: Any) -> Any:
    """The annotation of *converter*'s first parameter (what attrs puts on ``__init__``)."""
    if converter is None:
        return None
    try:
        path = cls.resolve(str(converter))
        function = cls.modules_collection[path]
    except (griffe.NameResolutionError, KeyError):
        return None
    parameters = getattr(function, "parameters", None)
    if not parameters:
        return None
    return next(iter(parameters)).annotation


def _field(
    cls: griffe.Class, attribute: griffe.Attribute, kw_only: bool
) -> griffe.Parameter | None:
    """The ``__init__`` parameter attrs makes of *attribute*, None if it makes none."""
    value = attribute.value
    arguments: dict[str, Any] = {}
    default: Any = value
    if isinstance(value, griffe.ExprCall) and value.canonical_path in ATTRS_FIELDS:
        arguments = _call_arguments(value)
        default = arguments.get("default")
        if "factory" in arguments:
            default = griffe.ExprCall(function=arguments["factory"], arguments=[])
    if isinstance(default, griffe.ExprCall) and default.canonical_path in ATTRS_FACTORIES:
        factory = _call_arguments(default).get("#0")
        default = griffe.ExprCall(function=factory, arguments=[]) if factory else None
    # What the docs show as the attribute's value: its default, not the
    # call; and a field is an instance attribute (attrs makes it a slot).
    attribute.value = default
    attribute.labels.discard("class-attribute")
    attribute.labels.add("instance-attribute")
    if "init" in arguments and not _is_true(arguments["init"]):
        return None
    name = str(arguments.get("alias", "")).strip("'\"") or attribute.name.lstrip("_")
    annotation = _converter_annotation(cls, arguments.get("converter")) or attribute.annotation
    kind = (
        griffe.ParameterKind.keyword_only
        if kw_only or _is_true(arguments.get("kw_only"))
        else griffe.ParameterKind.positional_or_keyword
    )
    return griffe.Parameter(
        name, annotation=annotation, kind=kind, default=default, docstring=attribute.docstring
    )


def _attrs_parameters(cls: griffe.Class) -> list[griffe.Parameter] | None:
    decorator = _attrs_decorator(cls)
    if decorator is None:
        return None
    options = (
        _call_arguments(decorator.value) if isinstance(decorator.value, griffe.ExprCall) else {}
    )
    if "init" in options and not _is_true(options["init"]):
        return None
    kw_only = _is_true(options.get("kw_only"))
    parameters = []
    for member in cls.members.values():
        if not isinstance(member, griffe.Attribute) or member.annotation is None:
            continue
        if "class-attribute" in member.labels and "instance-attribute" not in member.labels:
            continue  # a ClassVar
        if str(member.annotation).startswith(("ClassVar", "typing.ClassVar")):
            continue
        parameter = _field(cls, member, kw_only)
        if parameter is not None:
            parameters.append(parameter)
    return parameters


class AttrsFields(griffe.Extension):
    """Each attrs class gets the ``__init__`` attrs writes for it at run time."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _objects(pkg):
            if not isinstance(obj, griffe.Class) or "__init__" in obj.members:
                continue
            parameters = _attrs_parameters(obj)
            if parameters is None:
                continue
            # Fields of attrs base classes come first, as attrs orders them.
            inherited: list[griffe.Parameter] = []
            try:
                bases = obj.mro()
            except ValueError:
                bases = []
            for base in reversed(bases):
                init = base.members.get("__init__")
                if isinstance(init, griffe.Function) and init.lineno == 0:
                    inherited.extend(p for p in init.parameters if p.name != "self")
            ordered = {p.name: p for p in [*inherited, *parameters]}
            positional = [
                p for p in ordered.values() if p.kind is not griffe.ParameterKind.keyword_only
            ]
            keyword = [p for p in ordered.values() if p.kind is griffe.ParameterKind.keyword_only]
            init = griffe.Function(
                "__init__",
                lineno=0,
                endlineno=0,
                parent=obj,
                parameters=griffe.Parameters(
                    griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword),
                    *positional,
                    *keyword,
                ),
                returns="None",
            )
            obj.set_member("__init__", init)


__all__ = ["AttrsFields", "SphinxComments", "SphinxRoles", "render"]
