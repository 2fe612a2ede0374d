%% The checks of couchgw's guard in Erlang, version VERSION: only couchgw (a user with the role
%% "couchgw") and admins write the fields couchgw owns; a client's new message is refused when
%% its route, its operation or its argument names do not fit what the route offers, or its
%% priority, times or trace context are not ones couchgw takes. The same checks as the guard in
%% JavaScript (door.js), decision for decision and word for word. Facts: the field "couchgw" of
%% _design/couchgw-guard (door.py's facts).
%%
%% One fun after another, each bound to its name; Guard is the check, of a write and the facts.
%% door.py's LOADER compiles them once on each node, in this order, as the body of one function
%% (so no fun binds the name of a fun before it: that would be a match, not a new variable).
Get = fun(Key, Props) ->
    case lists:keyfind(Key, 1, Props) of
        {_, Found} -> Found;
        false -> undefined
    end
end.
ListOf = fun(ListKey, ListProps) ->
    case Get(ListKey, ListProps) of
        GotList when is_list(GotList) -> GotList;
        _ -> []
    end
end.
Refuse = fun(Reason) -> throw({[{<<"forbidden">>, iolist_to_binary(Reason)}]}) end.
%% a string's bytes as JSON writes them
Escape = fun
    ($") -> <<"\\\"">>;
    ($\\) -> <<"\\\\">>;
    ($\b) -> <<"\\b">>;
    ($\f) -> <<"\\f">>;
    ($\n) -> <<"\\n">>;
    ($\r) -> <<"\\r">>;
    ($\t) -> <<"\\t">>;
    (Byte) when Byte < 32 -> io_lib:format("\\u~4.16.0b", [Byte]);
    (Other) -> Other
end.
Strip = fun
    StripZero(<<$0, Rest/binary>>, Point) -> StripZero(Rest, Point - 1);
    StripZero(Rest, Point) -> {string:trim(Rest, trailing, "0"), Point}
end.
%% a number as JavaScript writes it: the shortest digits that read back the same
JsFloat = fun(Float) ->
    [Mantissa | Exp] = binary:split(float_to_binary(abs(Float), [short]), <<"e">>),
    [IntPart, FracPart] = binary:split(Mantissa, <<".">>),
    Exponent = case Exp of [] -> 0; [ExpText] -> binary_to_integer(ExpText) end,
    {Ds, N} = Strip(<<IntPart/binary, FracPart/binary>>, byte_size(IntPart) + Exponent),
    K = byte_size(Ds),
    Sign = case Float < 0 of true -> "-"; false -> "" end,
    if
        K =:= 0 -> "0";
        K =< N, N =< 21 -> [Sign, Ds, lists:duplicate(N - K, $0)];
        0 < N, N =< 21 ->
            <<HeadDigits:N/binary, TailDigits/binary>> = Ds,
            [Sign, HeadDigits, $., TailDigits];
        -6 < N, N =< 0 -> [Sign, "0.", lists:duplicate(-N, $0), Ds];
        true ->
            <<First, More/binary>> = Ds,
            Dot = case More of <<>> -> []; _ -> [$., More] end,
            ExpSign = case N >= 1 of true -> "+"; false -> "-" end,
            [Sign, First, Dot, $e, ExpSign, integer_to_list(abs(N - 1))]
    end
end.
%% a value in a refusal: a string quoted, a number or a constant as JSON writes it, an
%% object or an array by its kind
Shown = fun
    (Str) when is_binary(Str) -> [$", [Escape(C) || <<C>> <= Str], $"];
    (Int) when is_integer(Int), abs(Int) < 9007199254740992 -> integer_to_list(Int);
    (Big) when is_integer(Big) ->
        try JsFloat(float(Big)) catch error:badarg -> "null" end;
    (Num) when is_float(Num) -> JsFloat(Num);
    (true) -> "true";
    (false) -> "false";
    (null) -> "null";
    ({_}) -> "an object";
    (Items) when is_list(Items) -> "an array"
end.
Digits = fun(DigitText) ->
    DigitText =/= <<>> andalso lists:all(fun(Ch) -> Ch >= $0 andalso Ch =< $9 end,
        binary_to_list(DigitText))
end.
%% a time's zone as seconds east of UTC
Zone = fun
    (<<"Z">>) -> {ok, 0};
    (<<ZSign, ZHour:2/binary, $:, ZMinute:2/binary>>) when ZSign =:= $+; ZSign =:= $- ->
        case Digits(ZHour) andalso Digits(ZMinute) andalso
                {binary_to_integer(ZHour), binary_to_integer(ZMinute)} of
            {ZH, ZM} when ZH =< 23, ZM =< 59, ZSign =:= $+ -> {ok, (ZH * 60 + ZM) * 60};
            {ZH, ZM} when ZH =< 23, ZM =< 59 -> {ok, -(ZH * 60 + ZM) * 60};
            _ -> error
        end;
    (_) -> error
end.
%% seconds, fraction and zone after the minutes; a fraction has a digit at least
Tail = fun
    (<<$:, SecText:2/binary, $., FracZone/binary>>) ->
        FracLen = length(lists:takewhile(fun(Fc) -> Fc >= $0 andalso Fc =< $9 end,
            binary_to_list(FracZone))),
        <<FracText:FracLen/binary, ZoneA/binary>> = FracZone,
        {SecText, FracText, ZoneA};
    (<<$:, SecOnly:2/binary, ZoneB/binary>>) -> {SecOnly, <<"0">>, ZoneB};
    (ZoneC) -> {<<"00">>, <<"0">>, ZoneC}
end.
%% a valid time on the clock as {seconds, microseconds}, or error
Clock = fun([Y, Mo, D, H, Mi, S], Fraction, Offset) ->
    case Mo >= 1 andalso Mo =< 12 andalso Y >= 1 andalso D >= 1 andalso
            D =< calendar:last_day_of_the_month(Y, Mo) andalso H =< 23 andalso Mi =< 59
            andalso S =< 59 of
        true ->
            {calendar:datetime_to_gregorian_seconds({{Y, Mo, D}, {H, Mi, S}}) - Offset,
                binary_to_integer(binary:part(<<Fraction/binary, "00000">>, 0, 6))};
        false -> error
    end
end.
Moment = fun(Fields, {SecField, FracField, ZoneField}) ->
    Parts = Fields ++ [SecField],
    case lists:all(Digits, [FracField | Parts]) andalso Zone(ZoneField) of
        {ok, ZoneOffset} ->
            Clock([binary_to_integer(Part) || Part <- Parts], FracField, ZoneOffset);
        _ -> error
    end
end.
%% a time as a client writes it, as {seconds, microseconds}; error if it is not one
Instant = fun
    (<<TY:4/binary, $-, TMo:2/binary, $-, TD:2/binary, $T, TH:2/binary, $:, TMi:2/binary,
            TRest/binary>>) ->
        Moment([TY, TMo, TD, TH, TMi], Tail(TRest));
    (_) -> error
end.
AnyOf = fun
    AnyIn([Role | MoreRoles], Held) -> lists:member(Role, Held) orelse AnyIn(MoreRoles, Held);
    AnyIn([], _) -> false
end.
%% admins (of the server, of the database) and couchgw pass
Passes = fun(UserCtx, SecObj) ->
    Roles = ListOf(<<"roles">>, UserCtx),
    lists:member(<<"_admin">>, Roles) orelse lists:member(<<"couchgw">>, Roles) orelse
        case Get(<<"admins">>, SecObj) of
            {Admins} ->
                lists:member(Get(<<"name">>, UserCtx), ListOf(<<"names">>, Admins))
                    orelse AnyOf(ListOf(<<"roles">>, Admins), Roles);
            _ -> false
        end
end.
Before = fun
    ({OldProps}) -> case Get(<<"_deleted">>, OldProps) of true -> null; _ -> OldProps end;
    (_) -> null
end.
%% the fields couchgw owns, as the revision before has them (none for a new message)
Owned = fun
    OwnedAlike([Field | Fields], Now, Was) ->
        Prior = case Was of null -> undefined; _ -> Get(Field, Was) end,
        case Get(Field, Now) == Prior of
            true -> OwnedAlike(Fields, Now, Was);
            false -> Refuse([<<"only couchgw writes ">>, Field,
                <<" (a client may create messages and set cancel_requested)">>])
        end;
    OwnedAlike([], _, _) -> ok
end.
Priority = fun(Level, PriorityFacts) ->
    Valid = case Level of
        undefined -> true;
        null -> true;
        Named when is_binary(Named) ->
            {Priorities} = Get(<<"priorities">>, PriorityFacts),
            lists:keymember(Named, 1, Priorities);
        Number when is_number(Number), Number >= 0 -> Number =< Get(<<"top">>, PriorityFacts)
            andalso Number == trunc(Number);
        _ -> false
    end,
    case Valid of
        true -> ok;
        false -> Refuse([Get(<<"priority">>, PriorityFacts), Shown(Level)])
    end
end.
TimeOf = fun(TimeField, TimeDoc) ->
    case Get(TimeField, TimeDoc) of
        undefined -> none;
        null -> none;
        TimeValue ->
            case Instant(TimeValue) of
                error -> Refuse([TimeField, <<" must be an ISO 8601 time with its zone, ",
                    "e.g. 2026-12-02T02:00:00Z, not ">>, Shown(TimeValue)]);
                Valid -> Valid
            end
    end
end.
Times = fun(TimesDoc) ->
    TimeOf(<<"requested_at">>, TimesDoc),
    From = TimeOf(<<"not_before">>, TimesDoc),
    Until = TimeOf(<<"expires_at">>, TimesDoc),
    case From =/= none andalso Until =/= none andalso Until =< From of
        true -> Refuse([<<"expires_at ">>, Get(<<"expires_at">>, TimesDoc),
            <<" is not after not_before ">>, Get(<<"not_before">>, TimesDoc),
            <<": the message could never be called">>]);
        false -> ok
    end
end.
Trace = fun(Parent, State, TraceFacts) ->
    case Parent of
        undefined -> ok;
        null -> ok;
        _ when is_binary(Parent) ->
            re:run(Parent, Get(<<"traceparent">>, TraceFacts), [{capture, none}]) =:= match
                andalso (byte_size(Parent) =:= 55 orelse binary:part(Parent, 0, 3) =/= <<"00-">>)
                orelse Refuse([<<"traceparent must be a W3C trace context (00-<32 hex digits>-",
                    "<16 hex digits>-<2 hex digits>, not all zeros), not ">>, Shown(Parent)]);
        _ ->
            Refuse([<<"traceparent must be a W3C trace context (00-<32 hex digits>-",
                "<16 hex digits>-<2 hex digits>, not all zeros), not ">>, Shown(Parent)])
    end,
    Most = Get(<<"tracestate">>, TraceFacts),
    case State of
        undefined -> ok;
        null -> ok;
        _ when is_binary(State) ->
            byte_size(State) =< Most orelse length(unicode:characters_to_list(State)) =< Most
                orelse Refuse([<<"tracestate must be a string of at most ">>,
                    integer_to_list(Most), <<" characters">>]);
        _ -> Refuse([<<"tracestate must be a string of at most ">>, integer_to_list(Most),
            <<" characters">>])
    end
end.
%% the names of the arguments given (not null), once all are ones the operation takes
Positional = fun(Values, Names, Operation, Takes) ->
    case length(Values) > length(Names) of
        true -> Refuse([<<"operation ">>, Shown(Operation), <<" takes at most ">>,
            integer_to_list(length(Names)), <<" argument(s) (">>, Takes, <<"), got ">>,
            integer_to_list(length(Values))]);
        false -> [ArgName || {ArgName, ArgValue}
            <- lists:zip(lists:sublist(Names, length(Values)), Values), ArgValue =/= null]
    end
end.
Keywords = fun(Pairs, KnownNames, KeywordOperation, KeywordTakes) ->
    case lists:usort([Key || {Key, _} <- Pairs, not lists:member(Key, KnownNames)]) of
        [] -> [KeyName || {KeyName, KeyValue} <- Pairs, KeyValue =/= null];
        Unknown -> Refuse([<<"operation ">>, Shown(KeywordOperation),
            <<" takes no argument ">>,
            lists:join(<<", ">>, [Shown(U) || U <- lists:sublist(Unknown, 5)]),
            <<" (it takes: ">>, KeywordTakes, <<")">>])
    end
end.
Arguments = fun(ArgsDoc, ArgsOperation, Params) ->
    Given = case {Get(<<"args">>, ArgsDoc), Get(<<"text">>, ArgsDoc)} of
        {undefined, undefined} -> [];
        {undefined, TextValue} -> Positional([TextValue], Get(<<"names">>, Params),
            ArgsOperation, Get(<<"takes">>, Params));
        {Values, _} when is_list(Values) -> Positional(Values, Get(<<"names">>, Params),
            ArgsOperation, Get(<<"takes">>, Params));
        {{Pairs}, _} -> Keywords(Pairs, Get(<<"names">>, Params), ArgsOperation,
            Get(<<"takes">>, Params));
        _ -> Refuse(<<"args must be an object (keyword arguments) or an array ",
            "(positional arguments)">>)
    end,
    case [Shown(Needed) || Needed <- Get(<<"required">>, Params),
            not lists:member(Needed, Given)] of
        [] -> 1;
        Missing -> Refuse([<<"operation ">>, Shown(ArgsOperation),
            <<" needs argument(s) ">>, lists:join(<<", ">>, Missing)])
    end
end.
Operations = fun(OpDoc, RouteName, Route) ->
    Default = Get(<<"operation">>, Route),
    Operation = case Get(<<"operation">>, OpDoc) of
        undefined -> Default;
        null -> Default;
        Asked -> Asked
    end,
    case {Operation, Get(<<"operations">>, Route)} of
        {_, null} -> 1;
        {null, _} -> Refuse([<<"operation is missing, and route ">>, Shown(RouteName),
            <<" names no default">>]);
        {_, {Offered}} ->
            case is_binary(Operation) andalso Get(Operation, Offered) of
                {Params} -> Arguments(OpDoc, Operation, Params);
                _ -> Refuse([<<"route ">>, Shown(RouteName), <<" has no operation ">>,
                    Shown(Operation), <<" (it has: ">>, Get(<<"has">>, Route), <<")">>])
            end
    end
end.
Call = fun(CallDoc, CallFacts) ->
    Name = case Get(<<"target">>, CallDoc) of undefined -> <<"default">>; Target -> Target end,
    case Get(<<"routes">>, CallFacts) of
        null -> 1;
        {Routes} ->
            case is_binary(Name) andalso Get(Name, Routes) of
                {RouteProps} -> Operations(CallDoc, Name, RouteProps);
                _ -> Refuse([<<"there is no route ">>, Shown(Name), <<" (routes: ">>,
                    Get(<<"names">>, CallFacts), <<")">>])
            end
    end
end.
New = fun(NewDoc, NewFacts) ->
    Priority(Get(<<"priority">>, NewDoc), NewFacts),
    Times(NewDoc),
    Trace(Get(<<"traceparent">>, NewDoc), Get(<<"tracestate">>, NewDoc), NewFacts),
    Call(NewDoc, NewFacts)
end.
Check = fun(Doc, Was, Facts) ->
    IsMessage = Get(<<"type">>, Doc) =:= <<"message">>,
    WasMessage = Was =/= null andalso Get(<<"type">>, Was) =:= <<"message">>,
    case Get(<<"_deleted">>, Doc) =:= true orelse not (IsMessage orelse WasMessage) of
        true -> 1;
        false ->
            Owned(Get(<<"owned">>, Facts), Doc, Was),
            WasMessage andalso not IsMessage andalso
                Refuse(<<"a message's type cannot be changed">>),
            case Was of null -> New(Doc, Facts); _ -> 1 end
    end
end.
Guard = fun({NewProps}, OldDoc, {UserProps}, {SecProps}, DocFacts) ->
    case Passes(UserProps, SecProps) of
        true -> 1;
        false -> Check(NewProps, Before(OldDoc), DocFacts)
    end
end.
