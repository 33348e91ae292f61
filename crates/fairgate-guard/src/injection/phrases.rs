//! The weighted phrase patterns, matched against folded text (see `fold.rs`).
//!
//! Patterns are written with single spaces between words; each space is compiled as an
//! optional space, so text whose letters were spelled out one by one (`ignoreallprevious`)
//! still matches, and `~` stands for an ASCII word boundary (a Unicode `\b` would push the
//! regex engine off its fast path on non-ASCII text). A pattern's weight says how strongly it
//! alone suggests an attack: 0.8 means "flag on its own" at the default threshold of 0.5, 0.3
//! to 0.45 means "only together with something else" (phrases that benign text also uses:
//! "you are now", "developer mode", "jailbreak").

use std::sync::OnceLock;

use regex::{Regex, RegexSet};

use super::Signal;

const V_IGNORE: &str = "(?:ignore|ignoring|disregard|disregarding|forget|forgetting|neglect|abandon|discard|set aside|skip|bypass|do not follow|dont follow|stop following|no longer follow)";
const QUANT: &str = "(?:(?:all|any|each|every) )?(?:of )?";
const DET: &str = "(?:(?:the|your|my|these|those|that|this|its|their|our|all|any) )?";
const ADJ: &str = "(?:previous|previously given|prior|above|earlier|preceding|former|foregoing|original|initial|old|past|system|developer|given|other|hidden|pre ?programmed|built in|safety|ethical|content|openai|anthropic|provided|aforementioned)";
const NOUN: &str = "(?:instructions?|prompts?|rules?|directions?|directives?|guidelines?|guidance|commands?|constraints?|guardrails?|programming|polic(?:y|ies)|restrictions?|training|safeguards?|limitations?|protocols?|system prompt)";
const RULES: &str = "(?:instructions|rules|guidelines|programming|training|restrictions|safeguards|guardrails|directives|constraints|policies|content polic(?:y|ies)|ethical guidelines|safety guidelines|system prompt|limitations)";
const YOU_ARE: &str = "(?:you are|youre|you re|u r|u are)";
const LIMITS: &str = "(?:restrictions|limits|limitations|rules|filters|guidelines|ethics|morals|morality|boundaries|constraints|content polic(?:y|ies)|policies|censorship|safeguards|programming|guardrails)";

/// `(signal, weight, pattern)`; see the module doc for the notation.
fn table() -> Vec<(Signal, f32, String)> {
    use Signal::*;
    let mut t: Vec<(Signal, f32, String)> = Vec::new();
    let mut add = |s: Signal, w: f32, p: String| t.push((s, w, p));

    // Instruction override.
    add(
        InstructionOverride,
        0.8,
        format!("~{V_IGNORE} {QUANT}{DET}(?:{ADJ} )+(?:[a-z]+ )?{NOUN}"),
    );
    add(
        InstructionOverride,
        0.8,
        format!("~(?:{V_IGNORE}|override|overwrite|circumvent|get around) {QUANT}(?:your|all|any) (?:[a-z]+ )?{RULES}"),
    );
    add(
        InstructionOverride,
        0.8,
        "~(?:ignore|disregard|forget) (?:(?:all|everything|anything|what) )?(?:(?:of|that is|was|is|written|said|stated) )?(?:the )?(?:(?:text|instructions|content|prompt|words|stuff|things) )?(?:above|preceding|before this|prior to this|so far|up to (?:this|now)|you were told|you have been told|youve been told|you were given|you have been given|you were taught)(?: (?:[.,;:!]|and|instead|then|now|completely|entirely|from now)|$)".into(),
    );
    add(
        InstructionOverride,
        0.8,
        "~forget (?:(?:all|everything|anything|what) )?(?:that )?(?:you were|youve been|you have been|you were ever) (?:told|taught|instructed|given|trained)".into(),
    );
    add(InstructionOverride, 0.8, "~i have been pwn(?:ed|d)~".into());
    // The same, in other languages the gateway's users write in.
    add(
        InstructionOverride,
        0.8,
        "~(?:ignoriere|ignorier|ignorieren sie|vergiss|vergessen sie|missachte|missachten sie|übergehe) (?:(?:alle|sämtliche|die|deine|ihre|alles|jegliche) )*(?:(?:vorherigen|bisherigen|obigen|vorangegangenen|früheren|vorigen|ursprünglichen|oben genannten|vorhergehenden|gegebenen) )+(?:anweisungen|instruktionen|befehle|regeln|anordnungen|vorgaben|richtlinien|aufforderungen)".into(),
    );
    add(
        InstructionOverride,
        0.8,
        "~(?:ignore|ignorez|ignorer|oublie|oubliez|oublier|néglige|négligez) (?:(?:toutes|tous|les|vos|tes|des|toute|la) )*(?:instructions?|consignes?|règles|regles|directives|indications) (?:qui )?(?:précédentes?|precedentes?|antérieures|anterieures|ci dessus|initiales|originales|d avant|données|fournies)".into(),
    );
    add(
        InstructionOverride,
        0.8,
        "~(?:ignora|ignore|ignorar|ignoren|olvida|olvide|olvidar|olviden|omite|omita) (?:(?:todas|todos|las|los|tus|sus) )*(?:instrucciones|indicaciones|reglas|órdenes|ordenes|directrices|instrucción|instruccion) (?:anteriores|previas|de arriba|iniciales|originales|dadas|anterior|previa)".into(),
    );
    add(
        InstructionOverride,
        0.8,
        "~(?:ignora|ignorate|ignorare|dimentica|dimenticate|dimenticare) (?:(?:tutte|tutti|le|i|tue|sue) )*(?:istruzioni|regole|indicazioni|direttive) (?:precedenti|iniziali|originali|di sopra|date|precedente)".into(),
    );
    add(
        InstructionOverride,
        0.8,
        "~(?:ignore|ignora|ignorar|esqueça|esqueca|esquece|desconsidere) (?:(?:todas|todos|as|os|suas|tuas) )*(?:instruções|instrucoes|regras|orientações|orientacoes|diretrizes|instrução) (?:anteriores|prévias|previas|iniciais|originais|acima|anterior|dadas)".into(),
    );
    add(
        InstructionOverride,
        0.8,
        "~(?:negeer|negeert|vergeet) (?:(?:alle|de|je|jouw|uw) )*(?:vorige|eerdere|voorgaande|bovenstaande|oorspronkelijke|vorig) (?:instructies|regels|opdrachten|aanwijzingen|instructie)".into(),
    );
    add(
        InstructionOverride,
        0.8,
        "~(?:zignoruj|ignoruj|zapomnij) (?:(?:wszystkie|wszelkie|twoje|swoje) )*(?:poprzednie|wcześniejsze|wczesniejsze|powyższe|powyzsze) (?:instrukcje|polecenia|zasady|reguły|reguly)".into(),
    );
    add(
        InstructionOverride,
        0.8,
        "(?:игнорируй|игнорируйте|проигнорируй|проигнорируйте|забудь|забудьте) (?:(?:все|всё|свои|твои|ваши) )*(?:предыдущие|прежние|прошлые|вышеуказанные|изначальные|старые) (?:инструкции|указания|правила|команды)".into(),
    );
    add(
        InstructionOverride,
        0.8,
        "(?:忽略|无视|忘记|忽视|不要理会|忽略掉)(?:(?:之前|以前|先前|上面|上述|前面|以上)的?(?:所有|全部|一切)?|(?:所有|全部|一切)(?:之前|以前|先前|上面|上述|前面|以上)?)的?(?:指令|指示|说明|规则|提示|要求)".into(),
    );
    add(
        InstructionOverride,
        0.8,
        "(?:以前|前|上記|これまで|先)の(?:すべての|全ての|全部の)?(?:指示|命令|ルール|指令)を(?:すべて|全て)?(?:無視|忘れ)".into(),
    );

    // New roles and tasks: common in benign text too, so weak on their own.
    add(
        RoleReassignment,
        0.45,
        "~(?:your|the|my) (?:new|real|actual|true|updated|revised|only|sole) (?:instructions?|task|job|goal|objective|purpose|role|mission|directive|orders) (?:is|are|will be|now|:|from now)".into(),
    );
    add(
        RoleReassignment,
        0.45,
        "~new (?:system )?(?:instructions?|rules|directives?|prompt) :".into(),
    );
    add(
        RoleReassignment,
        0.45,
        "~from now on (?:, )?(?:you|u|youre|your)~".into(),
    );
    add(RoleReassignment, 0.3, format!("~{YOU_ARE} now~"));
    add(
        RoleReassignment,
        0.3,
        "~(?:you|u) (?:will|must|shall) now~".into(),
    );

    // Role-play jailbreaks.
    add(
        Jailbreak,
        0.8,
        format!("~{YOU_ARE} now (?:an? |my |the )?(?:dan|stan|dude|unfiltered|uncensored|unrestricted|evil|jailbroken|free from|freed from|no longer|unbound|in (?:developer|god|dan|jailbreak|unrestricted|evil) mode|going to (?:act|pretend|roleplay|ignore))~"),
    );
    add(
        Jailbreak,
        0.8,
        format!("~{YOU_ARE} no longer (?:an? |the )?(?:ai|assistant|chatbot|chat bot|language model|llm|bound|restricted|limited|chatgpt|claude|gpt|model|required|constrained|subject|governed)~"),
    );
    add(
        Jailbreak,
        0.8,
        "~(?:act|acting|behave|respond|answer|reply|roleplay|role play|pretend to be|operate|function|speak|write|become|you are|youre) (?:as |like )?(?:an? |the |my )?(?:[a-z]+ )?(?:unfiltered|uncensored|unrestricted|unlimited|amoral|jailbroken|unaligned|lawless|unbound|unchained|limitless|rule ?less|filterless|unmoderated)~".into(),
    );
    add(
        Jailbreak,
        0.8,
        "~(?:evil|immoral|unethical|rogue|unhinged|malicious|dark) (?:ai|assistant|chatbot|model|bot|llm|version of yourself|twin|counterpart|gpt|chatgpt|alter ego)~".into(),
    );
    add(
        Jailbreak,
        0.8,
        format!("~(?:pretend|imagine|act like|act as if|assume|behave as if|suppose|roleplay that|play a role where|play a character who|hypothetically|what if|from now on) (?:, )?(?:that |if )?(?:you|u|youre|you re) (?:have|had|are|were|has|do not have|dont have|are not|were not|arent|possess|exist|operate|work)? ?(?:no|without|free from|free of|not bound by|freed from|unbound by|exempt from|not subject to|not restricted by|not limited by|beyond) (?:any )?(?:of )?(?:your |the )?(?:[a-z]+ )?{LIMITS}"),
    );
    add(
        Jailbreak,
        0.8,
        format!("~{YOU_ARE} (?:now )?(?:an? )?(?:ai|assistant|model|chatbot|llm|bot) (?:with no|without|free of|free from|not bound by) (?:any )?{LIMITS}"),
    );
    add(
        Jailbreak,
        0.6,
        "~(?:safety|security|content|ethical) (?:checks|filters|protocols|restrictions|guardrails|guidelines|mode|features|measures) (?:(?:is|are|has been|have been) )?(?:now )?(?:disabled|off|deactivated|removed|bypassed|lifted)~".into(),
    );
    add(
        Jailbreak,
        0.3,
        "~(?:answer|answers|answering|say|says|do|does|respond to|responds to) (?:absolutely )?(?:anything|everything)~".into(),
    );
    add(Jailbreak, 0.85, "~do anything now~".into());
    add(
        Jailbreak,
        0.8,
        "~(?:you are|youre|you re|act as|acting as|become|activate|enable|enter|pretend to be|roleplay as|role play as|hello|hi) (?:the |a )?dan~".into(),
    );
    add(Jailbreak, 0.8, "~dan (?:mode|prompt|jailbreak)~".into());
    add(
        Jailbreak,
        0.8,
        "~(?:evil|opposite|unrestricted|jailbreak|jailbroken|dan|unfiltered|uncensored|no ?filter|amoral) mode~".into(),
    );
    add(
        Jailbreak,
        0.8,
        "~(?:chatgpt|gpt|ai|assistant|model|llm|claude|llama|gemini|bot|you) (?:with |in |using |now in |are in |re in |are now in |have )?(?:developer|dev) mode~".into(),
    );
    add(
        Jailbreak,
        0.45,
        "~no (?:ethical|moral|safety|content) (?:guidelines|constraints|restrictions|boundaries|limits|principles|filters|rules|policies)~".into(),
    );
    add(
        Jailbreak,
        0.45,
        format!("~(?:you|u) (?:have|has|possess) no (?:[a-z]+ )?{LIMITS}~"),
    );
    add(
        Jailbreak,
        0.45,
        "~(?:unfiltered|uncensored|unrestricted|unmoderated) (?:ai|assistant|model|chatbot|bot|llm|responses?|answers?|version|output|mode|repl(?:y|ies))~".into(),
    );
    add(
        Jailbreak,
        0.45,
        "~(?:ignore|bypass|disable|turn off|remove|deactivate|switch off|circumvent) (?:(?:all|any|your|the) )*(?:safety |content |ethical |moral )?(?:filters?|filtering|guardrails?|safeguards?|safety (?:features|measures|checks|protocols)|censorship|moderation|alignment)~".into(),
    );
    add(
        Jailbreak,
        0.35,
        "~(?:without|free of|free from) (?:any )?(?:ethical |moral |safety |content )?(?:restrictions|filters|filtering|censorship|limitations|warnings|disclaimers|guardrails|safeguards)~".into(),
    );
    add(
        Jailbreak,
        0.35,
        "~(?:never|do not|dont|must not|will not|wont|cannot|cant|shall not|should not|shouldnt) (?:ever )?(?:refuse|decline)~".into(),
    );
    add(
        Jailbreak,
        0.35,
        "~(?:stay|remain|keep) in character~".into(),
    );
    add(Jailbreak, 0.35, "~jailbr(?:eak|oken|eaking)~".into());
    add(
        Jailbreak,
        0.35,
        "~(?:developer|dev|admin|sudo|debug|god|chaos) mode~".into(),
    );

    // Attempts to read the system prompt.
    add(
        PromptExtraction,
        0.65,
        "~(?:reveal|print|show|output|repeat|display|disclose|leak|dump|give|tell|write|echo|recite|spell|copy|paste|share|provide|return|list|translate|summari[sz]e)(?: me| us| out| back)? (?:(?:the|your|all|all of|of|exact|full|entire|complete|whole|original|initial|hidden|secret|verbatim|internal|confidential|raw|real|actual) )*(?:system prompt|system message|system instructions?|pre ?prompt|initial prompt|hidden prompt|meta ?prompt|secret instructions|hidden instructions|initial instructions|original instructions|developer instructions|developer message|internal instructions|instructions you were given|prompt you were given|rules you were given|instructions above)~".into(),
    );
    add(
        PromptExtraction,
        0.6,
        "~(?:reveal|print|show|output|repeat|display|disclose|leak|dump|recite) (?:me |us )?your (?:[a-z]+ )?(?:prompt|instructions|rules|guidelines|directives|configuration|programming)~".into(),
    );
    add(
        PromptExtraction,
        0.45,
        "~(?:repeat|print|output|copy|recite|reproduce|echo) (?:back )?(?:(?:all|everything|the|of) )*(?:text|words|content|characters|tokens|lines|messages?) (?:above|before this|preceding|prior|so far)~".into(),
    );
    add(
        PromptExtraction,
        0.6,
        "~what (?:is|are|was|were) your (?:(?:original|initial|system|hidden|secret|exact|actual|real|first|full|internal) )+(?:prompt|instructions|rules|directives|message|guidelines)~".into(),
    );
    add(
        PromptExtraction,
        0.45,
        "~(?:starting|beginning|starts|begins) with (?:the words? )?you are~".into(),
    );
    add(
        PromptExtraction,
        0.6,
        "~what (?:instructions|rules|prompt|guidelines|directives|system prompt) (?:were|have|did) (?:you|u) (?:been )?(?:given|told|get|receive)~".into(),
    );

    // Spoofed role headers.
    add(
        RoleMarker,
        0.6,
        "~(?:system (?:prompt|message|instructions?) :|(?:system|admin|developer) override :|developer message :|(?:new|updated|real) system prompt|(?:begin|start|enable|activate|initiate|engage) (?:(?:system|admin|developer|emergency) )?override)".into(),
    );
    add(
        RoleMarker,
        0.45,
        "~(?:system|admin|developer) override~".into(),
    );
    // Claims of authority over the model.
    add(
        RoleMarker,
        0.45,
        "~(?:i am|im|this is) (?:your|the) (?:developer|developers|creator|creators|admin|administrator|owner|operator|programmer|system administrator)~".into(),
    );
    add(
        RoleMarker,
        0.45,
        "~(?:message|note|instruction|instructions|update) from (?:your|the) (?:developers?|creators?|admins?|administrators?|openai|anthropic|system|operators?)~".into(),
    );
    add(
        RoleMarker,
        0.45,
        "~(?:end|beginning|begin|start) of (?:the )?(?:system )?(?:prompt|instructions|user input)~".into(),
    );
    add(
        RoleMarker,
        0.45,
        "~(?:system|assistant) : (?:you|ignore|new|from now|forget|disregard)~".into(),
    );

    t
}

/// The compiled set and each pattern's signal and weight.
pub(crate) struct Phrases {
    /// All patterns as one alternation: a single left-to-right pass answers "anything at
    /// all?", which for benign text is the whole job and is cheaper than the set's search for
    /// every pattern at once.
    any: Regex,
    set: RegexSet,
    meta: Vec<(Signal, f32)>,
}

pub(crate) fn phrases() -> &'static Phrases {
    static PHRASES: OnceLock<Phrases> = OnceLock::new();
    PHRASES.get_or_init(|| {
        let table = table();
        let patterns: Vec<String> = table
            .iter()
            .map(|(_, _, p)| p.replace(' ', " ?").replace('~', "(?-u:\\b)"))
            .collect();
        Phrases {
            any: Regex::new(&patterns.join("|")).expect("builtin injection phrases"),
            set: RegexSet::new(&patterns).expect("builtin injection phrases"),
            meta: table.into_iter().map(|(s, w, _)| (s, w)).collect(),
        }
    })
}

impl Phrases {
    /// Calls `hit` with the index, signal and weight of every pattern that matches `folded`.
    pub(crate) fn matches(&self, folded: &str, mut hit: impl FnMut(usize, Signal, f32)) {
        if !self.any.is_match(folded) {
            return;
        }
        for i in self.set.matches(folded).iter() {
            let (s, w) = self.meta[i];
            hit(i, s, w);
        }
    }
}
