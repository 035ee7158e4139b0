"""Our own prompt phrasings for music and audio, in the style of the reference's instruction lists.

`to_text` asks for a description of the input (other2text); `from_text` asks for media that fits a
caption (text2other; the prompt goes on with ` This is input: {text}`).
"""

from __future__ import annotations

from anygpt_core.spec import Instructions

__all__ = ["AUDIO_INSTRUCTIONS", "MUSIC_INSTRUCTIONS"]

MUSIC_INSTRUCTIONS = Instructions(
    to_text=(
        "Describe the character of this piece of music.",
        "Tell me what you hear in this track.",
        "Which instruments can you make out in this recording?",
        "Write a short caption for this piece of music.",
        "How would you sum up the style of this song?",
        "Explain the feeling this melody leaves with a listener.",
        "Give a brief description of the tempo and rhythm of this music.",
        "What genre does this track belong to, and why?",
        "Put the atmosphere of this music into a few sentences.",
        "Summarize this musical excerpt for someone who cannot hear it.",
        "Characterize the harmony and texture of this piece.",
        "What scene could this music accompany? Describe it.",
        "Describe how this piece develops from start to finish.",
        "Name the mood of this song and the sounds that create it.",
        "Write a one-sentence review of this musical clip.",
        "Listen closely and describe the lead instrument and what backs it.",
        "Is this music calm or energetic? Explain what you hear.",
        "Describe the vocals, if any, and the accompaniment in this track.",
        "Provide a caption that captures the sound of this recording.",
        "What would you tell a friend about this piece of music?",
    ),
    from_text=(
        "Compose a piece of music that fits this description.",
        "Write a short track inspired by the following caption.",
        "Turn this description into music.",
        "Create a melody that matches the mood of this text.",
        "Produce a musical clip that brings this caption to life.",
        "Generate music in the style described here.",
        "Make a piece of music that a listener would describe this way.",
        "Score a short piece for the scene in this text.",
        "Play something that sounds like this description.",
        "Come up with an instrumental passage based on this caption.",
        "Let this text guide a new musical composition.",
        "Compose a tune whose character follows this description.",
        "Create background music that suits this caption.",
        "Generate a song excerpt that reflects these words.",
        "Arrange a short musical idea from the following description.",
        "Write music with the instruments and mood named in this text.",
        "Produce a track that answers to this caption.",
        "Turn these words into rhythm and melody.",
        "Improvise a musical piece that captures this text.",
        "Render this description as a short piece of music.",
    ),
)

AUDIO_INSTRUCTIONS = Instructions(
    to_text=(
        "Describe the sounds in this recording.",
        "What can be heard in this audio clip?",
        "List the sound sources you notice in this audio.",
        "Write a caption for this sound recording.",
        "Where might this audio have been recorded? Explain what you hear.",
        "Describe the background noises in this clip.",
        "Tell me which events happen in this recording, in order.",
        "Is anyone speaking in this audio, or is it only ambient sound?",
        "Summarize this soundscape in one sentence.",
        "Identify the most prominent sound in this clip.",
        "Describe how loud and how busy this recording sounds.",
        "What is making the noise in this audio?",
        "Give a short description of the acoustic scene.",
        "Name the sound effects you can pick out here.",
        "Describe this audio for someone who cannot hear it.",
        "Which sounds in this recording are close and which are far away?",
        "Characterize the environment this sound comes from.",
        "Does this recording contain animals, machines or people? Describe them.",
        "Caption this clip as a sound effects library would.",
        "Explain what is going on in this audio.",
    ),
    from_text=(
        "Generate the sound described by this text.",
        "Create an audio clip that matches this caption.",
        "Produce a soundscape for the scene in this description.",
        "Make the sound effect this text describes.",
        "Turn this caption into audio.",
        "Record an imaginary scene that sounds like this description.",
        "Synthesize ambient sound that fits these words.",
        "Create the background noise this text calls for.",
        "Generate a short sound clip based on this caption.",
        "Render this description as an acoustic scene.",
        "Produce audio in which these events can be heard.",
        "Create a sound effect that a listener would caption this way.",
        "Make a recording of the place described here.",
        "Generate ambience that matches this description.",
        "Let this text guide a new sound clip.",
        "Design a sound that illustrates the following caption.",
        "Create the sounds of the events in this text.",
        "Produce a field recording that fits this caption.",
        "Turn these words into a short piece of sound design.",
        "Generate a clip that sounds the way this text reads.",
    ),
)
