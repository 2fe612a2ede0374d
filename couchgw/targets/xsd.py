"""
The XML Schema types of a WSDL as couchgw sees them: a tree of L{Complex} types whose L{Field}s
(elements and attributes) hold L{Simple} or complex types, read (L{Reader}) from the types suds
resolved.  The check of the arguments and the conversions both ways (L{couchgw.targets.wsdl})
and their JSON Schema (L{couchgw.targets.described}) all walk this one tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any

import re2
from suds.bindings.binding import PartElement
from suds.xsd import qualify, sxbasic
from suds.xsd.query import TypeQuery
from suds.xsd.sxbase import XBuiltin

XSD_NS = "http://www.w3.org/2001/XMLSchema"
SOAP_ENCODING_NS = "http://schemas.xmlsoap.org/soap/encoding/"


@dataclass(eq=False)
class Simple:
    """
    A simple type: a built-in XSD type (C{base}), narrowed by the facets a schema states.

    @ivar name: the type's own name (the built-in's for a built-in type).
    @ivar items: for an C{xsd:list} type, the type of its items (C{base} is then C{"list"}).
    """

    base: str
    name: str
    enum: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    length: int | None = None
    min_length: int | None = None
    max_length: int | None = None
    minimum: Decimal | None = None
    maximum: Decimal | None = None
    exclusive_minimum: Decimal | None = None
    exclusive_maximum: Decimal | None = None
    total_digits: int | None = None
    fraction_digits: int | None = None
    items: Simple | None = None


@dataclass(eq=False)
class Field:
    """
    An element or attribute of a complex type, or a parameter of an operation.

    @ivar name: its JSON key.
    @ivar key: suds' name for it (an attribute's starts with C{_}).
    @ivar required: a message must give it (a value other than null: null is as absent).
    @ivar many: it repeats (a JSON list), from C{min_items} to C{max_items} (None: unbounded).
    @ivar choice: the index of the C{xsd:choice} in L{Complex.choices} it is a branch of.
    """

    name: str
    key: str
    type: Simple | Complex
    required: bool = False
    many: bool = False
    min_items: int = 0
    max_items: int | None = None
    nillable: bool = False
    attribute: bool = False
    choice: int | None = None


@dataclass(eq=False)
class Choice:
    """An C{xsd:choice}: at most one of its branches (at least one when it is required)."""

    names: list[str]
    required: bool


@dataclass(eq=False)
class Complex:
    """
    A complex type.

    @ivar name: the type's name (None for an anonymous type).
    @ivar text: the type of its text, for a type with simple content (JSON key C{value}).
    @ivar open: it takes elements the schema does not name (C{xsd:any}).
    @ivar items: for an array type (one repeated element and nothing else, or a SOAP-encoded
        array), that element: the type is a JSON list of it.
    @ivar encoded: a SOAP-encoded array (suds takes a plain list for it).
    @ivar anything: C{xsd:anyType}: any JSON value passes.
    """

    name: str | None
    fields: list[Field] = field(default_factory=list)
    choices: list[Choice] = field(default_factory=list)
    text: Simple | None = None
    open: bool = False
    items: Field | None = None
    encoded: bool = False
    anything: bool = False

    def field(self, name: str) -> Field | None:
        for candidate in self.fields:
            if candidate.name == name:
                return candidate
        return None


#: The type of any value (C{xsd:anyType}, and elements with no type).
ANY = Complex("anyType", anything=True)

#: The facets read, with the field of L{Simple} each sets and how to read its value.
_FACETS: dict[str, tuple[str, Any]] = {
    "length": ("length", int),
    "minLength": ("min_length", int),
    "maxLength": ("max_length", int),
    "totalDigits": ("total_digits", int),
    "fractionDigits": ("fraction_digits", int),
    "minInclusive": ("minimum", Decimal),
    "maxInclusive": ("maximum", Decimal),
    "minExclusive": ("exclusive_minimum", Decimal),
    "maxExclusive": ("exclusive_maximum", Decimal),
}


def portable(pattern: str) -> bool:
    """
    Whether an XML Schema pattern means the same to RE2 and to JSON Schema: not when it uses
    character classes they lack (C{\\p{...}}, C{\\i}, C{\\c}) or class subtraction.
    """
    inside, i = 0, 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            if pattern[i + 1 : i + 2] in ("p", "P", "i", "I", "c", "C"):
                return False
            i += 2
            continue
        if char == "[":
            if inside and pattern[i - 1] == "-":
                return False
            inside += 1
        elif char == "]" and inside:
            inside -= 1
        i += 1
    return True


_RE2 = re2.Options()
_RE2.log_errors = False


@cache
def compiled(pattern: str) -> Any | None:
    """
    A pattern compiled by RE2, which matches in time linear in the text: no string a client
    sends can make it backtrack and hold the reactor.  None if RE2 cannot take it (that
    pattern is then left to the service to check).
    """
    try:
        return re2.compile(pattern, _RE2)
    except re2.error:
        return None


def matches(pattern: str, text: str) -> bool:
    """Whether the whole of C{text} matches a pattern L{compiled} takes."""
    found = compiled(pattern)
    return found is None or found.fullmatch(text) is not None


def _occurs(text: str | None, default: int | None) -> int | None:
    if text is None:
        return default
    if text == "unbounded":
        return None
    try:
        return int(text)
    except ValueError:
        return default


class Reader:
    """Reads suds' schema objects into L{Complex}, L{Field} and L{Simple} (each type once)."""

    def __init__(self) -> None:
        #: Each suds type read, by its id, held with its model (a type read once and let go, as
        #: an attribute's own is, would leave its id to another).
        self._types: dict[int, tuple[Any, Simple | Complex]] = {}

    def field(self, node: Any, name: str | None = None, optional: bool = False) -> Field:
        """The field of a suds element, attribute or message part."""
        attribute = bool(node.isattr())
        name = name or str(node.name)
        if attribute:
            return Field(
                name=name,
                key=f"_{name}",
                type=self.type_of(node),
                required=not optional and node.use == "required",
                attribute=True,
            )
        least = _occurs(node.min, 1) or 0
        most = _occurs(node.max, 1)
        if isinstance(node, PartElement):
            least = 0  # suds sends a message part given no value as nothing
        return Field(
            name=name,
            key=name,
            type=self.type_of(node),
            required=least > 0 and not optional,
            many=most is None or most > 1,
            min_items=0 if optional else least,
            max_items=most,
            nillable=bool(node.nillable),
        )

    def type_of(self, node: Any) -> Simple | Complex:
        """The type of an element, attribute or part: its named type, or the one it holds."""
        if isinstance(node, PartElement):
            return self.resolved(node.resolve())
        for child in node.rawchildren:
            if isinstance(child, (sxbasic.Complex, sxbasic.Simple)):
                return self.resolved(child)
        if node.isattr() and node.type is None:
            held = _attribute_type(node)
            if held is not None:
                return self.resolved(held)
        if node.type is None:
            return ANY
        return self.resolved(node.resolve())

    def resolved(self, sx: Any) -> Simple | Complex:
        """The model of a resolved suds type (built-in, simple or complex)."""
        known = self._types.get(id(sx))
        if known is not None:
            return known[1]
        if isinstance(sx, XBuiltin):
            model: Simple | Complex = (
                ANY if sx.name == "anyType" else Simple(str(sx.name), str(sx.name))
            )
            self._types[id(sx)] = (sx, model)
            return model
        if isinstance(sx, sxbasic.Simple):
            simple = Simple("anySimpleType", str(sx.name or ""))
            self._types[id(sx)] = (sx, simple)
            self._simple(sx, simple)
            simple.name = simple.name or simple.base  # an anonymous type is named by its base
            return simple
        if isinstance(sx, (sxbasic.Complex, sxbasic.Element)):
            name = str(sx.name) if isinstance(sx, sxbasic.Complex) and sx.name else None
            complex_ = Complex(name)
            self._types[id(sx)] = (sx, complex_)
            self._content(sx, complex_, optional=False, many=False, choice=None)
            self._array(complex_)
            return complex_
        return ANY

    def _base(self, sx: Any, ref: Any) -> Any:
        if ref is None:
            return None
        return TypeQuery(ref).execute(sx.schema)

    def _simple(self, sx: Any, simple: Simple) -> None:
        for child in sx.rawchildren:
            if isinstance(child, sxbasic.Restriction):
                self._restriction(child, simple)
            elif isinstance(child, sxbasic.List):
                simple.base = "list"
                item_ref = child.root.get("itemType")
                inline = [c for c in child.rawchildren if isinstance(c, sxbasic.Simple)]
                if inline:
                    simple.items = self._as_simple(self.resolved(inline[0]))
                elif item_ref:
                    qref = qualify(item_ref, child.root, child.root.defaultNamespace())
                    found = TypeQuery(qref).execute(child.schema)
                    simple.items = self._as_simple(self.resolved(found))
                else:
                    simple.items = Simple("string", "string")

    def _as_simple(self, model: Simple | Complex) -> Simple:
        return model if isinstance(model, Simple) else Simple("anySimpleType", "anySimpleType")

    def _restriction(self, restriction: Any, simple: Simple) -> None:
        """A simple type's restriction: its base's facets, then its own over them."""
        base = self._base(restriction, restriction.ref)
        if base is not None:
            inherited = self._as_simple(self.resolved(base))
            for name, value in vars(inherited).items():
                if name != "name":
                    setattr(simple, name, value)
        enum = [c.name for c in restriction.rawchildren if isinstance(c, sxbasic.Enumeration)]
        if enum:
            simple.enum = tuple(dict.fromkeys(str(e) for e in enum))
        patterns = []
        for facet in restriction.root.getChildren():
            value = facet.get("value")
            if value is None:
                continue
            if facet.name == "pattern":
                if portable(value) and compiled(value) is not None:
                    patterns.append(value)
            elif facet.name in _FACETS:
                try:
                    which, read = _FACETS[facet.name]
                    setattr(simple, which, read(value))
                except (ValueError, InvalidOperation):
                    pass  # a facet that does not read as a number narrows nothing here
        if patterns:
            # patterns of one restriction are alternatives; those of a base must hold too
            either = patterns[0] if len(patterns) == 1 else "|".join(f"(?:{p})" for p in patterns)
            if compiled(either) is not None:
                simple.patterns = (*simple.patterns, either)

    def _content(
        self, sx: Any, complex_: Complex, optional: bool, many: bool, choice: int | None
    ) -> None:
        """Fields of a complex type from its content model (sequences, choices, extensions)."""
        for child in sx.rawchildren:
            if isinstance(child, sxbasic.Element):
                self._add(complex_, self.field(child, optional=optional), many, choice)
            elif isinstance(child, sxbasic.Attribute):
                if getattr(child, "aty", None) or (child.root.get("ref") or "").endswith(
                    ":arrayType"
                ):
                    self._encoded_array(child, complex_)
                    continue
                self._add(complex_, self.field(child), False, None)
            elif isinstance(child, sxbasic.Any):
                complex_.open = True
            elif isinstance(child, sxbasic.Choice):
                index = len(complex_.choices)
                complex_.choices.append(Choice([], child.min != "0" and not optional))
                repeats = many or (_occurs(child.max, 1) or 2) > 1
                self._content(child, complex_, True, repeats, index)
            elif isinstance(child, (sxbasic.Sequence, sxbasic.All, sxbasic.Group)):
                # a sequence that is a branch of a choice is optional as a whole; which of its
                # elements go together is not told apart from the other branches
                skippable = optional or child.min == "0"
                repeats = many or (_occurs(child.max, 1) or 2) > 1
                self._content(child, complex_, skippable, repeats, None)
            elif isinstance(child, sxbasic.SimpleContent):
                self._simple_content(child, complex_)
            elif isinstance(child, sxbasic.Restriction) and _is_soap_array(child):
                complex_.encoded = True
                self._content(child, complex_, optional, many, choice)
            elif isinstance(child, (*_WRAPPERS, sxbasic.AttributeGroup)):
                self._content(child, complex_, optional, many, choice)

    def _add(self, complex_: Complex, new: Field, many: bool, choice: int | None) -> None:
        if many and not new.many:
            new.many, new.max_items = True, None
        if choice is not None:
            new.required, new.choice = False, choice
            complex_.choices[choice].names.append(new.name)
        if any(f.key == new.key for f in complex_.fields):
            return  # a base type's field, met again through its extension
        if new.attribute and complex_.field(new.name) is not None:
            new.name = new.key  # an attribute named as an element is sent as suds names it
        complex_.fields.append(new)

    def _simple_content(self, content: Any, complex_: Complex) -> None:
        for derivation in content.rawchildren:
            if not isinstance(derivation, (sxbasic.Extension, sxbasic.Restriction)):
                continue
            base = self._base(derivation, derivation.ref)
            model = self.resolved(base) if base is not None else None
            if isinstance(model, Simple):
                complex_.text = model
            elif isinstance(model, Complex) and model.text is not None:
                complex_.text = model.text
            self._content(derivation, complex_, False, False, None)

    def _encoded_array(self, attribute: Any, complex_: Complex) -> None:
        """The C{soapenc:arrayType} attribute of a SOAP-encoded array names its items' type."""
        complex_.encoded = True
        aty = getattr(attribute, "aty", None)
        if aty is None:
            return
        found = TypeQuery(aty).execute(attribute.schema)
        item = self.resolved(found) if found is not None else ANY
        complex_.items = Field("item", "item", item, many=True)

    def _array(self, complex_: Complex) -> None:
        """A type of one repeated element and nothing else is a JSON list of it."""
        if complex_.encoded:
            complex_.fields = []
            if complex_.items is None:
                complex_.items = Field("item", "item", ANY, many=True)
            return
        if (
            len(complex_.fields) == 1
            and complex_.fields[0].many
            and not complex_.fields[0].attribute
            and not complex_.open
            and complex_.text is None
            and not complex_.choices
        ):
            complex_.items = complex_.fields[0]


def _attribute_type(attribute: Any) -> Any:
    """The simple type an attribute holds (suds reads no type inside an attribute)."""
    root = attribute.root.getChild("simpleType")
    if root is None:
        return None
    held = sxbasic.Factory.create(root, attribute.schema)
    held.rawchildren = sxbasic.Factory.build(root, attribute.schema, held.childtags())
    for part in held.content():
        part.qualify()
    return held


#: What holds a complex type's content without changing it.
_WRAPPERS = (sxbasic.ComplexContent, sxbasic.Extension, sxbasic.Restriction, sxbasic.Complex)


def _is_soap_array(restriction: Any) -> bool:
    ref = restriction.ref
    return isinstance(ref, tuple) and ref == ("Array", SOAP_ENCODING_NS)
