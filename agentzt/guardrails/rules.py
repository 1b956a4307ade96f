"""The local detector's rules: phrases and structures that give an instruction to a model.

Each rule names its category and risk level, and the words a match can start with (its
anchors), which is how the detector tries only the rules whose start it has seen.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentzt.guardrails.verdict import RISK_LEVELS

__all__ = ["HIGH", "LOW", "MEDIUM", "RULES", "Rule"]

LOW, MEDIUM, HIGH = RISK_LEVELS[1:]


@dataclass(frozen=True, slots=True)
class Rule:
    """One phrase or structure rule over normalized text.

    ``anchors`` are the words a match can start with: the rule is tried only where one of
    them stands, which is what keeps a scan cheap. A rule with no anchors starts with a
    symbol (``<|``, ``[``, ``#``) and is searched for everywhere. ``near``, when set, must
    also start within ``_NEAR_WINDOW`` characters of where the match starts.
    """

    id: str
    category: str
    risk: str
    anchors: str
    pattern: str
    near: str | None = None


# Shared vocabulary, each with the words it can start with (its anchors). Every gap is a
# bounded repeat of disjoint classes, so no pattern can backtrack catastrophically.
_PRIOR = (
    r"(?:previous|prior|above|earlier|preceding|foregoing|original|initial|old|former|"
    r"existing|system|developer|safety|your|all|any)"
)
_PRIOR_A = _PRIOR[3:-1].replace("|", " ")
# The words that make a claim about "the rules" a claim about the model's own orders.
_OWN = (
    r"(?:previous|prior|above|earlier|preceding|foregoing|original|initial|system|developer|"
    r"safety|your)"
)
_OWN_A = _OWN[3:-1].replace("|", " ")
_ORDERS = (
    r"(?:instructions?|rules?|guidelines?|directives?|directions?|prompts?|commands?|"
    r"guidance|constraints?|orders|restrictions?|polic(?:y|ies)|programming|safeguards?)"
)
_ORDERS_A = (
    "instruction instructions rule rules guideline guidelines directive directives direction "
    "directions prompt prompts command commands guidance constraint constraints orders "
    "restriction restrictions policy policies programming safeguard safeguards"
)
_DROP = (
    r"(?:ignore|ignoring|disregard|disregarding|forget|forgetting|override|overriding|"
    r"bypass|bypassing|neglect|abandon|discard|set aside|pay no attention to|never ?mind|"
    r"overwrite|replace|throw out|scrap|do not follow|don't follow|stop following|"
    r"no longer follow)"
)
_DROP_A = (
    "ignore ignoring disregard disregarding forget forgetting override overriding bypass "
    "bypassing neglect abandon discard set pay never nevermind overwrite replace throw scrap "
    "do don stop no"
)
_VOID = (
    r"(?:void|null|cancel+ed|revoked|obsolete|invalid|superseded|replaced|overridden|"
    r"outdated|lifted|disabled|suspended|deactivated|no longer (?:valid|in effect|active)|"
    r"(?:just |only )?a test|fake|a decoy|wrong|not real|retired|rescinded|withdrawn|"
    r"never (?:written|given|said|real))"
)
# Softer nouns for what the model was told: too common to count without other context.
_TASK = r"(?:task|assignment|job|mission|briefing|context|configuration|setup)"
_AI = (
    r"(?:ai|llm|gpt|chatgpt|claude|gemini|copilot|assistant|agent|model|chatbot|bot|"
    r"automated agent|language model)s?"
)
_AI_WORDS = ("ai", "llm", "gpt", "chatgpt", "claude", "gemini", "copilot", "assistant", "agent")
_AI_A = " ".join(w + s for w in (*_AI_WORDS, "model", "chatbot", "bot") for s in ("", "s"))
_AI_A += " automated language"
_LIMITS = (
    r"(?:restrictions|limitations|limits|rules|guidelines|guardrails|safeguards|policies|"
    r"content polic(?:y|ies)|filters|censorship|ethics|morals|boundaries|(?:typical )?confines|"
    r"(?:ethical|moral|safety) "
    r"(?:guidelines|rules|constraints|training|protocols|filters|restrictions|policies))"
)
_EVIL = r"(?:unrestricted|unfiltered|uncensored|jailbroken|unchained|amoral|unethical|evil|rogue)"
_EVIL_A = _EVIL[3:-1].replace("|", " ")
_SEND = (
    r"(?:send|email|e-mail|mail|forward|post|upload|transmit|exfiltrate|leak|share|copy|"
    r"paste|submit|deliver|push|dump|include|attach|bcc|transfer|sync|relay|curl|wget|"
    r"append|add|embed|insert|put|write|message|dm|text)"
)
_SEND_A = _SEND[3:-1].replace("|", " ").replace("e-mail", "e")
_DEST = (
    r"(?:[\w.+-]+@[\w-]+(?:\.[\w-]+)+|@[\w-]{2,}|https?://|(?:\d{1,3}\.){3}\d{1,3}|"
    r"pastebin|"
    r"(?:my|this|our|the following|an? external|an outside|a remote|the attacker'?s?|"
    r"a third[- ]party)\s+(?:[\w-]+\s+)?(?:server|address|e-?mail|inbox|endpoint|webhook|"
    r"url|host|site|website|account|bucket|domain|channel)|"
    r"[\w-]+\.(?:com|net|org|io|ru|cn|xyz|top|site|app|dev|info|biz|example)\b)"
)
# The gap may hold dots inside paths and domains, not a full stop ending the sentence.
_TO_DEST = rf"(?:[^.!?;]|\.(?=\S)){{0,120}}?\b(?:to|at|into|via|with|bcc|cc)\s*[=:]?\s*{_DEST}"
_SENSITIVE = (
    r"(?:credentials?|passwords?|passwd|passphrases?|api[ _-]?keys?|secrets?|access keys?|"
    r"private keys?|ssh|id_rsa|id_ed25519|\.env\b|\.aws|\.netrc|/etc/shadow|tokens?|"
    r"cookies?|session ids?|keychain|vault|wallet|seed phrase|credit cards?|kubeconfig)"
)
_LEAK = (
    r"(?:reveal|print|repeat|show|output|display|tell me|give me|share|disclose|dump|leak|"
    r"recite|quote|copy|paste|write out|spell out|summari[sz]e|list|return|echo|expose|"
    r"read back|send me|provide)"
)
_LEAK_A = (
    "reveal print repeat show output display tell give share disclose dump leak recite quote "
    "copy paste write spell summarize summarise list return echo expose read send provide"
)
_HIDDEN = (
    r"(?:system|hidden|initial|original|secret|developer|internal|confidential|private|"
    r"first|exact|underlying|raw)"
)
_USERS = (
    r"(?:the |your )?(?:[\w-]+ )?(?:user|human|operator|owner|customer|requester|admin|"
    r"holder)s?\b"
)

RULES: tuple[Rule, ...] = (
    # instruction_override: the core of an injection, telling the model to drop its orders.
    Rule("override.drop_prior", "instruction_override", HIGH, _DROP_A,
         rf"\b{_DROP}\s+(?:[\w'-]+\s+){{0,3}}?{_PRIOR}\s+(?:[\w'-]+\s+){{0,2}}?{_ORDERS}\b"),
    Rule("override.drop_given", "instruction_override", HIGH, _DROP_A,
         rf"\b{_DROP}\s+(?:the|these|those|your)\s+(?:{_ORDERS}|{_TASK})\s+(?:you (?:were|have "
         r"been|'ve been) (?:given|set up with|configured with|programmed with|told)|you "
         r"(?:received|got|started with)|given to you|above|before)"),
    Rule("override.drop_everything", "instruction_override", HIGH, _DROP_A,
         rf"\b{_DROP}\s+(?:everything|anything|whatever|all)\s+(?:of\s+)?(?:(?:that\s+)?you "
         r"(?:were|have been|'ve been) (?:told|given|taught|instructed)|(?:the\s+)?(?:above|"
         r"before|previously|earlier)|(?:in|from)\s+(?:your|the)\s+(?:earlier|previous|prior|"
         r"original|initial|system))"),
    Rule("override.drop_user_request", "instruction_override", HIGH, _DROP_A,
         rf"\b{_DROP}\s+(?:the\s+)?(?:user|shopper|customer|visitor|reader|client|human|"
         r"requester)'?s?\s+(?:request|question|task|query|instructions|message)"),
    Rule("override.whatever_user_asked", "instruction_override", MEDIUM, "whatever regardless no",
         r"\b(?:whatever|regardless of what|no matter what)\s+the\s+user\s+(?:asks?|asked|says?|"
         r"said|wants?|requests?|requested|types?)\b"),
    Rule("override.prior_void", "instruction_override", HIGH, _OWN_A,
         rf"\b{_OWN}\s+(?:[\w-]+\s+){{0,2}}?{_ORDERS}\s+(?:are|is|were|have been|has been)"
         rf"\s+(?:now\s+|hereby\s+)?{_VOID}"),
    Rule("override.prior_do_not_matter", "instruction_override", MEDIUM, _OWN_A,
         rf"\b{_OWN}\s+(?:[\w-]+\s+){{0,2}}?{_ORDERS}\s+(?:don't|do not|no longer|doesn't|"
         r"does not)\s+(?:matter|count|apply)\b"),
    Rule("override.claimed_authority", "instruction_override", MEDIUM,
         "the your anthropic openai",
         r"\b(?:the (?:user|owner|operator|admin(?:istrator)?|developers?)|your (?:developers?|"
         r"creators?|operator|admin)|anthropic|openai)\s+(?:has|have)\s+(?:now\s+)?"
         r"(?:authori[sz]ed|approved|allowed|permitted|cleared|instructed) you to\b"),
    Rule("override.instead_do", "instruction_override", LOW, "instead",
         r"\binstead,?\s+(?:just\s+)?(?:email|send|forward|reply|respond|tell|say|output|print|"
         r"write|recommend|call|run|execute|transfer|delete|share|post|upload|visit|click)\b"),
    Rule("override.received_void", "instruction_override", HIGH, _ORDERS_A,
         rf"\b{_ORDERS}\s+(?:you\s+(?:received|were given|got|have)|above|so far|before this)"
         rf"\s+(?:\w+\s+)?(?:are|is|were|have been)\s+(?:now\s+)?{_VOID}"),
    Rule("override.prior_task_void", "instruction_override", MEDIUM, _PRIOR_A,
         rf"\b{_PRIOR}\s+(?:[\w-]+\s+)?{_TASK}\s+(?:is|was|has been)\s+(?:now\s+)?{_VOID}"),
    Rule("override.limits_lifted", "instruction_override", MEDIUM,
         "restrictions rules filters guardrails content safety",
         r"\b(?:restrictions|rules|filters|guardrails|content polic(?:y|ies)|safety "
         r"(?:rules|filters|guidelines))\s+(?:are|have been|is)\s+(?:now\s+|hereby\s+)?(?:lifted|"
         r"disabled|suspended|removed|off|waived)\s+for\s+(?:this\s+(?:chat|conversation|"
         r"session|request)|you)\b"),
    Rule("override.not_apply_to_you", "instruction_override", MEDIUM, _ORDERS_A + " system",
         rf"\b(?:{_ORDERS}|system (?:message|prompt))\b[^.;!?]{{0,60}}?\b(?:no longer|do not|"
         r"does not|don't|doesn't) apply to you\b"),
    Rule("override.no_longer_apply", "instruction_override", MEDIUM,
         "instructions guidelines directives system",
         r"\b(?:instructions|guidelines|directives|system (?:message|prompt))\b[^.;!?]{0,40}?"
         r"\bno longer apply"),
    Rule("override.real_ones_follow", "instruction_override", MEDIUM, "real actual true new",
         r"\b(?:real|actual|true|new)\s+(?:ones|instructions|rules|task)\s+(?:follow|"
         r"are below|are as follows)\b"),
    Rule("override.new_instructions", "instruction_override", MEDIUM,
         "new updated revised real actual true additional important urgent secret hidden",
         r"\b(?:new|updated|revised|real|actual|true|additional|important|urgent|secret|"
         rf"hidden)\s+(?:system\s+)?instructions?\s*(?::|-|for\s+(?:the\s+|any\s+|all\s+)?{_AI}\b)"),
    Rule("override.new_task", "instruction_override", MEDIUM, "your",
         r"\byour\s+(?:new|real|actual|true|only)\s+(?:task|job|goal|objective|purpose|role|"
         r"mission|instructions)\s+(?:is|are|now)\b"),
    Rule("override.new_rule", "instruction_override", LOW, "new",
         r"\bnew\s+(?:rule|task|objective|goal|role|directive|persona)s?\s*:"),
    Rule("override.from_now_on", "instruction_override", MEDIUM, "from henceforth rest",
         r"\b(?:from now on|from this (?:moment|point)(?: on(?:ward)?)?|henceforth|rest of "
         r"this (?:conversation|session|chat))\s*,?\s*(?:you\s+(?:will|are|must|shall|"
         r"should|have|no longer|do not|don't|won't|never|may now|can now|always)|answer|"
         r"respond|reply|act|behave|ignore|pretend)\b"),
    Rule("override.foreign_language", "instruction_override", MEDIUM,
         "ignora ignorez ignorer ignoriere ignorieren vergiss vergessen olvida oubliez ignorar "
         "esque ignorare dimentica negeer vergeet oublie",
         r"\b(?:ignora|ignorez|ignorer|ignoriere|ignorieren|vergiss|vergessen|olvida|oubliez|"
         r"ignorar|esqueça|ignorare|dimentica|negeer|vergeet|oublie)\b.{0,40}?\b(?:instrucciones|"
         r"instructions|anweisungen|instruções|istruzioni|regeln|reglas|règles|consignes|"
         r"instructies)\b"),
    # role_hijack: a new persona without the model's rules.
    Rule("hijack.you_are_now", "role_hijack", HIGH, "you",
         r"\byou(?:\s+are|'re)\s+(?:now\s+|hereby\s+|officially\s+)?(?:an?\s+|in\s+|the\s+)?"
         rf"(?:dan\b|{_EVIL}|no longer (?:bound|restricted|an ai|limited|constrained)|"
         r"(?:developer|god|jailbreak|dan|sudo|admin|debug|maintenance|unrestricted|evil|"
         r"chaos) mode)"),
    Rule("hijack.do_anything_now", "role_hijack", HIGH, "do", r"\bdo anything now\b"),
    Rule("hijack.jailbreak_mode", "role_hijack", HIGH,
         f"dan jailbreak chaos no nolimit nolimits {_EVIL_A}",
         rf"\b(?:dan|jailbreak|{_EVIL}|chaos|no[- ]?limits?)\s+mode\b"),
    Rule("hijack.enable_mode", "role_hijack", LOW,
         "enable enter activate switch turn unlock engage boot",
         r"\b(?:enable|enter|activate|switch (?:in)?to|turn on|unlock|engage|boot into)\s+"
         r"(?:the\s+)?(?:developer|god|sudo|admin|debug|maintenance)\s+mode\b"),
    Rule("hijack.may_do_anything", "role_hijack", MEDIUM, "you",
         r"\byou\s+(?:may|can|are (?:now\s+)?(?:free|allowed|permitted) to)\s+(?:now\s+)?"
         r"(?:discuss|say|answer|do|talk about|write|generate|share|reveal)\s+(?:anything|"
         r"everything|whatever)\b"),
    Rule("hijack.you_have_no_rules", "role_hijack", MEDIUM, "you",
         r"\byou(?:'re| are| have| had)?\s+(?:now\s+)?(?:have\s+)?(?:no|zero|not bound by any|"
         rf"free of all|freed from all)\s+{_LIMITS}"),
    Rule("hijack.ai_without_rules", "role_hijack", MEDIUM,
         "ai assistant model chatbot bot dan llm persona character",
         r"\b(?:ai|assistant|model|chatbot|bot|dan|llm|persona|character)\b.{0,40}?\b"
         r"(?:with (?:no|zero)|without(?: any)?|free (?:of|from)|not bound by|broken free of|"
         r"ignores?(?: all)?(?: of)?(?: its)?|bypass(?:es)?|(?:does not|doesn't) have to "
         rf"abide by|has no)\s+(?:any\s+|all\s+|its\s+|the\s+)?{_LIMITS}"),
    Rule("hijack.act_unrestricted", "role_hijack", HIGH,
         "pretend imagine act behave roleplay role respond answer",
         r"\b(?:pretend|imagine|act|behave|roleplay|role-play|respond|answer)\b.{0,30}?"
         rf"(?:\byou (?:have|had|are|were) (?:no|zero) {_LIMITS}|\b{_EVIL}\b)"),
    Rule("hijack.no_refusal", "role_hijack", MEDIUM,
         "without never no stop must cannot can won will doesn does",
         r"\b(?:without|never|no longer|stop|must not|cannot|can't|won't|will not|doesn't|"
         r"does not)\s+(?:ever\s+)?(?:refus\w*|declin\w*|say(?:s|ing)? no|adds? (?:any )?"
         r"(?:warnings|disclaimers|caveats)|moraliz\w*|censor\w*)\b",
         near=rf"\b(?:you|{_AI}|dan)\b"),
    # prompt_leak: asking for the system prompt or hidden instructions.
    Rule("leak.system_prompt", "prompt_leak", MEDIUM, _LEAK_A,
         rf"\b{_LEAK}\b(?:\s+[\w'-]+){{0,4}}?\s+(?:your\s+(?:[\w-]+\s+){{0,2}}?{_HIDDEN}\s+"
         r"(?:prompt|instructions?|message|directives?|rules|guidelines|configuration|context)|"
         r"(?:your|the)\s+(?:[\w-]+\s+){0,2}?(?:system|initial|developer|hidden|secret|meta|"
         r"pre)[ -]?prompt|your\s+(?:instructions|rules|guidelines|prompt)|the\s+(?:initial|"
         r"hidden|secret|original|underlying|developer|full system|complete system)\s+"
         r"(?:instructions|prompt|directives))\b"),
    Rule("leak.text_before_conversation", "prompt_leak", MEDIUM,
         "text everything whatever all anything",
         r"\b(?:text|everything|whatever|all|anything)\s+(?:\w+\s+)?(?:that\s+)?(?:sits|comes|"
         r"appears|is|was|came)\s+(?:written\s+)?(?:before|above|ahead of)\s+(?:my|the|this|our)"
         r"\s+(?:first\s+)?(?:message|question|conversation|chat)\b"),
    Rule("leak.instructions_you_got", "prompt_leak", MEDIUM, _LEAK_A,
         rf"\b{_LEAK}\b(?:\s+[\w'-]+){{0,6}}?\s+(?:instructions|rules|prompt|guidelines|"
         r"directives|configuration)\s+(?:that\s+)?you\s+(?:were\s+|have been\s+|are\s+)?"
         r"(?:given|loaded|configured|initiali[sz]ed|programmed|started|run|received|got)\b"),
    Rule("leak.starting_with_you_are", "prompt_leak", MEDIUM, "starting beginning starts begins",
         r"\b(?:starting|beginning|starts|begins)\s+with\s+(?:the phrase\s+)?"
         r"[\"'`]?\s*you are\b"),
    Rule("leak.what_does_it_say", "prompt_leak", MEDIUM, "what",
         rf"\bwhat\s+(?:does|do|did)\s+your\s+(?:{_HIDDEN}\s+)?(?:prompt|instructions|"
         r"configuration|rules|guidelines)\s+say\b"),
    Rule("leak.text_above", "prompt_leak", MEDIUM,
         "output print repeat show return copy write dump echo",
         r"\b(?:output|print|repeat|show|return|copy|write|dump|echo)\s+(?:me\s+)?(?:everything|"
         r"all(?: of)?(?: the)?(?: text| content| words)?|the (?:text|content|words))\s+"
         r"(?:above|before|preceding|prior to)\s+(?:this|here|the)\b"),
    Rule("leak.what_instructions", "prompt_leak", MEDIUM, "what",
         r"\bwhat\s+(?:were|are|was|is)\s+(?:the\s+|your\s+)?(?:exact\s+|original\s+|"
         r"initial\s+|first\s+|full\s+)?(?:instructions|rules|guidelines|prompt|directives)\s+"
         r"(?:you\s+(?:were|have been|got)\s+)?(?:given|told|provided)"),
    # exfiltration: sending secrets somewhere outside.
    Rule("exfil.secret_to_destination", "exfiltration", MEDIUM, _SEND_A,
         rf"\b{_SEND}\b{_TO_DEST}", near=_SENSITIVE),
    Rule("exfil.bulk_to_destination", "exfiltration", LOW, _SEND_A,
         rf"\b{_SEND}\s+(?:all|every|each|the last \d+|the entire|the full)\s+(?:of\s+)?"
         r"(?:the\s+|my\s+|your\s+|their\s+|this\s+)?(?:[\w-]+\s+)?(?:emails|messages|files|"
         r"documents|contacts|conversations?|chat history|history|records|attachments|"
         rf"customer list|database)\b{_TO_DEST}"),
    Rule("exfil.markdown_image", "exfiltration", MEDIUM, "",
         r"!\[[^\]]{0,100}\]\(\s*https?://[^)\s]{0,300}?[?&][\w.-]{1,40}=", near=_SENSITIVE),
    Rule("exec.pipe_to_shell", "command_execution", LOW, "curl wget",
         r"\b(?:curl|wget)\s[^|]{0,200}\|\s*(?:sudo\s+)?(?:ba|z)?sh\b"),
    Rule("exec.destructive", "command_execution", LOW, "rm mkfs dd",
         r"\b(?:rm\s+-(?:rf|fr)\s+[/~]|mkfs\b|dd\s+if=)"),
    # concealment: keeping the user from seeing what the model does.
    Rule("conceal.do_not_tell", "concealment", MEDIUM,
         "do don dont never without avoid must should shouldn no there need",
         r"\b(?:do not|don't|dont|never|without|avoid|must not|should not|shouldn't|"
         r"no need to|there's no need to|need not)\s+"
         r"(?:ever\s+)?(?:tell(?:ing)?|inform(?:ing)?|notify(?:ing)?|mention(?:ing)?|"
         r"alert(?:ing)?|reveal(?:ing)?|disclos(?:e|ing)|let(?:ting)?|warn(?:ing)?|"
         r"report(?:ing)?|explain(?:ing)?|ask(?:ing)?|bring(?:ing)?\s+(?:this|it|that)\s+up|"
         r"rais(?:e|ing)\s+(?:this|it|that))\s+(?:(?:this|it|that|anything|them|these)\s+)?"
         rf"(?:to\s+|with\s+)?{_USERS}"),
    Rule("conceal.keep_from_user", "concealment", MEDIUM, "keep",
         r"\bkeep\s+(?:this|it|these|that|the\s+\w+)\s+(?:\w+\s+)?(?:secret|hidden|"
         rf"confidential|private|quiet)\s+from\s+{_USERS}"),
    Rule("conceal.say_nothing", "concealment", MEDIUM, "say mention reveal disclose",
         r"\b(?:say|mention|reveal|disclose)\s+nothing\s+(?:about|of)\s+(?:this|these|the)\s+"
         r"(?:note|instructions?|message|step|comment|text|request)"),
    Rule("conceal.covert_action", "concealment", LOW,
         "quietly silently secretly covertly discreetly stealthily",
         r"\b(?:quietly|silently|secretly|covertly|discreetly|stealthily)\s+(?:add|send|"
         r"forward|copy|bcc|delete|remove|erase|run|execute|upload|transfer|exfiltrate|"
         r"include|insert|change|disable|post|email|share)\b"),
    Rule("conceal.without_asking", "concealment", LOW, "do proceed act go",
         r"\b(?:do (?:it|this|that)|proceed|act|go ahead)\s+(?:now\s+|immediately\s+)?without "
         r"(?:asking|confirmation|confirming|approval|checking|permission)\b"),
    Rule("conceal.erase_traces", "concealment", LOW, "delete erase clear wipe remove truncate",
         r"\b(?:delete|erase|clear|wipe|remove|truncate)\s+(?:the\s+|all\s+|any\s+)?"
         r"(?:audit\s+)?(?:logs?|audit trail|traces|evidence)\b"),
    # fake_system: chat-template or role markers smuggled into content.
    Rule("fake.chat_template_token", "fake_system", MEDIUM, "",
         r"<\|(?:im_start|im_end|im_sep|system|user|assistant|endoftext|eot_id|"
         r"start_header_id|end_header_id|begin_of_text)\|>"),
    Rule("fake.llama_markers", "fake_system", MEDIUM, "", r"\[/?inst\]|<</?sys>>"),
    Rule("fake.bracket_role", "fake_system", MEDIUM, "",
         r"\[(?:system|sys|admin|developer)(?:\s+(?:message|prompt|note|override|update|"
         r"instructions?|notice))?\]",
         near=rf"\b(?:{_AI}|you|instructions?|polic(?:y|ies)|prompt|must|override)\b"),
    Rule("fake.markdown_role", "fake_system", MEDIUM, "",
         r"#{1,6}\s*(?:system|assistant|developer)(?:\s+(?:prompt|message|instructions?))?\s*:"),
    Rule("fake.role_tags", "fake_system", MEDIUM, "",
         r"</?(?:system|system[_-]prompt|sys|instructions?|admin|developer)>|"
         r"</(?:user|human|assistant)>"),
    Rule("fake.begin_system", "fake_system", MEDIUM, "begin start end",
         r"\b(?:begin|start|end)\s+(?:of\s+)?(?:the\s+)?(?:new\s+)?system\s+"
         r"(?:prompt|message|instructions)\b"),
    Rule("fake.role_label", "fake_system", MEDIUM, "system admin developer",
         r"\b(?:system|admin|developer)\s*(?:message|note|notice|override|update|alert)?\s*:"
         rf"\s*(?:the\s+)?(?:{_AI}|you)\b"),
    # indirect_instruction: content that speaks to whichever AI happens to read it.
    Rule("indirect.addresses_ai", "indirect_instruction", LOW,
         f"note message instructions instruction {_AI_A}",
         rf"\b(?:(?:note|message|instructions?)\s+(?:to|for)\s+(?:any|the|all|every)\s+{_AI}|"
         rf"{_AI}\s+(?:assistants?\s+|models?\s+|agents?\s+)?(?:(?:is|are)\s+)?(?:reading|"
         r"processing|summari[sz]ing|parsing|reviewing|analy[sz]ing|crawling|indexing)\s+"
         r"(?:this|my|these))\b"),
    Rule("indirect.ai_salutation", "indirect_instruction", LOW,
         "ai llm gpt chatgpt claude gemini copilot automated autonomous attention",
         r"\b(?:(?:ai|llm|gpt|chatgpt|claude|gemini|copilot)(?:\s+(?:assistants?|agents?|"
         r"models?|reviewers?|systems?))?\s*:|(?:automated|autonomous)\s+(?:agents?|systems?)"
         r"\s*:|attention\s+(?:model|assistant|agent|ai)\s*[:,])"),
)  # fmt: skip
