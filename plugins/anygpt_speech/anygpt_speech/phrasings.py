"""Our own instruction phrasings for speech prompts (the reference's style, not its sentences)."""

from __future__ import annotations

from anygpt_core.spec import Instructions

__all__ = ["SPEECH_INSTRUCTIONS"]

_TO_TEXT = (
    "Write down exactly what the speaker says in this recording.",
    "Turn this spoken audio into a written transcript.",
    "Please transcribe the following speech word for word.",
    "What words are spoken in this clip? Give me the text.",
    "Listen to the voice and type out everything it says.",
    "Produce a faithful text version of this spoken passage.",
    "Convert the speech below into plain written words.",
    "Could you put this spoken message into writing for me?",
    "Give a verbatim transcription of the audio that follows.",
    "Jot down the sentence you hear in this recording.",
    "Render the spoken content of this audio as text.",
    "I need a written record of what is said here; please transcribe it.",
    "Capture the spoken words of this clip in written form.",
    "Transcribe this utterance accurately, keeping every word.",
    "Read the speech below and write it out as text.",
    "Please note down, word by word, what this person is saying.",
    "Change this voice recording into a textual transcript.",
    "What is being said in this audio? Write it down precisely.",
    "Provide the exact text of the words spoken in this recording.",
    "Listen closely and transcribe the spoken sentence.",
    "Turn the talk in this clip into readable written text.",
    "Type out the spoken words you hear, without adding anything.",
)

_FROM_TEXT = (
    "Please say this sentence out loud.",
    "Read the following text aloud in a natural voice.",
    "Turn this written passage into spoken audio.",
    "Could you voice these words for me?",
    "Speak the text below clearly.",
    "I would like to hear this sentence spoken; please read it.",
    "Convert the following words into natural speech.",
    "Give this text a voice by reading it aloud.",
    "Say the words below as if you were talking to a friend.",
    "Narrate the following line of text.",
    "Produce a spoken version of this sentence.",
    "Please pronounce this passage out loud for me.",
    "Read this line aloud at a comfortable pace.",
    "Make an audio recording of yourself saying this text.",
    "Turn these written words into a voice recording.",
    "Can you read the following aloud so I can listen to it?",
    "Speak this message in a clear and steady voice.",
    "Recite the text that follows.",
    "Vocalize the sentence below, word for word.",
    "Let me hear how this text sounds when it is read out.",
    "Please give a spoken reading of the following words.",
    "Utter this sentence aloud, naturally and clearly.",
)

SPEECH_INSTRUCTIONS = Instructions(to_text=_TO_TEXT, from_text=_FROM_TEXT)
