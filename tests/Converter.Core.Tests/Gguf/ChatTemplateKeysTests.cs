using Converter.Formats.Gguf;
using Converter.Models.Tokenizers;

namespace Converter.Core.Tests.Gguf;

/// <summary>The chat template keys as llama.cpp's converter writes them (gguf-py GGUFWriter.add_chat_template, v0.5.0).</summary>
public sealed class ChatTemplateKeysTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("chat-template-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private Dictionary<string, GgufValue> Keys() => ChatTemplateKeys.Read(_dir).ToDictionary(k => k.Key, k => k.Value);

    [Fact]
    public void AStringTemplateIsTokenizerChatTemplate()
    {
        File.WriteAllText(Path.Combine(_dir, "tokenizer_config.json"), """{"chat_template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"}""");
        File.WriteAllText(Path.Combine(_dir, "chat_template.jinja"), "ignored: tokenizer_config wins");
        Keys().Should().ContainSingle().Which.Value.AsString().Should().Be("{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}");
    }

    [Fact]
    public void NamedTemplatesGiveDefaultAndOneKeyPerOtherName()
    {
        File.WriteAllText(Path.Combine(_dir, "tokenizer_config.json"),
            """{"chat_template": [{"name": "default", "template": "D"}, {"name": "tool-use", "template": "T"}, {"name": "rag", "template": "R"}, {"template": "no name"}]}""");
        var keys = Keys();
        keys["tokenizer.chat_template"].AsString().Should().Be("D");
        keys["tokenizer.chat_template.tool_use"].AsString().Should().Be("T");
        keys["tokenizer.chat_template.rag"].AsString().Should().Be("R");
        keys["tokenizer.chat_templates"].AsArray<string>().Should().Equal("tool_use", "rag");
        keys.Should().HaveCount(4);
    }

    [Fact]
    public void WithoutTheKeyTheJinjaFileThenChatTemplateJson()
    {
        File.WriteAllText(Path.Combine(_dir, "tokenizer_config.json"), """{"bos_token": "<s>"}""");
        Keys().Should().BeEmpty();
        File.WriteAllText(Path.Combine(_dir, "chat_template.json"), """{"chat_template": "J"}""");
        Keys()["tokenizer.chat_template"].AsString().Should().Be("J");
        File.WriteAllText(Path.Combine(_dir, "chat_template.jinja"), "K");
        Keys()["tokenizer.chat_template"].AsString().Should().Be("K");
    }

    [Fact]
    public void ATemplateOfAnotherKindIsRefusedNamingTheFile()
    {
        File.WriteAllText(Path.Combine(_dir, "tokenizer_config.json"), """{"chat_template": 3}""");
        FluentActions.Invoking(Keys).Should().Throw<InvalidDataException>().WithMessage("*tokenizer_config.json: chat_template is neither*");
    }
}
